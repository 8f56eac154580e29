// Kiln's API from TypeScript through openapi-fetch, typed by openapi-typescript
// (generated/kiln.ts, from `npm run generate`). The same walk as every example: who am
// I, a namespace (its create replayed with an Idempotency-Key, a stale If-Match refused),
// a build with an artifact followed to its end, its jobs page by page and their output,
// the artifact's bytes, an object uploaded and read back in part, and the problem `code`
// of a 404. Exits non-zero at the first answer that is not as it should be.
//
//   KILN_URL=https://127.0.0.1:8443 KILN_TOKEN=... NODE_EXTRA_CA_CERTS=.kiln/cert.pem \
//     node dist/src/openapi-fetch/scenario.js
import createClient from "openapi-fetch";
import type { components, paths } from "../../generated/kiln.js";
import {
  ARTIFACT,
  GREETING,
  MISSING_BUILD,
  SETTLED,
  UPLOAD,
  check,
  manifest,
  server,
  sha256,
  sleep,
  suffix,
} from "../common.js";

type Job = components["schemas"]["Job"];

const { url, token } = server();
const kiln = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${token}` } });
const id = suffix();

const me = await kiln.GET("/api/v1/user");
check(me.data !== undefined, `who am I: ${me.response.status}`);
console.log(`signed in as ${me.data.username}`);

// A create, and the same create again with its Idempotency-Key: the first result.
const key = { "Idempotency-Key": `namespace-${id}` };
const body = { name: `ts-of-${id}`, visibility: "private" } as const;
const created = await kiln.POST("/api/v1/namespaces", { params: { header: key }, body });
check(created.data !== undefined && created.response.status === 201, "create a namespace");
const namespace = created.data;
const replayed = await kiln.POST("/api/v1/namespaces", { params: { header: key }, body });
check(replayed.response.status === 200, `the replay answered ${replayed.response.status}`);
check(replayed.data?.id === namespace.id, "the replay made another namespace");
check(replayed.response.headers.get("Idempotent-Replayed") === "true", "not marked a replay");
console.log(`namespace ${namespace.path} (id ${namespace.id}), replayed with its key`);

// If-Match: a change with the current ETag is taken, one with an older ETag is 412.
const path = { id: namespace.id };
const current = await kiln.GET("/api/v1/namespaces/{id}", { params: { path } });
const etag = current.response.headers.get("ETag");
check(etag !== null, "a namespace without an ETag");
const first = await kiln.PATCH("/api/v1/namespaces/{id}", {
  params: { path, header: { "If-Match": etag } },
  body: { description: "first" },
});
check(first.response.status === 200, `a current If-Match answered ${first.response.status}`);
const stale = await kiln.PATCH("/api/v1/namespaces/{id}", {
  params: { path, header: { "If-Match": etag } },
  body: { description: "second" },
});
check(stale.response.status === 412, `a stale If-Match answered ${stale.response.status}`);
check(stale.error?.code === "precondition_failed", "not a precondition_failed problem");
console.log("a stale If-Match is 412 precondition_failed");

// A build, polled until it settles.
const submitted = await kiln.POST("/api/v1/builds", {
  body: { manifest: manifest(namespace.path) },
});
check(submitted.data !== undefined, `submit a build: ${submitted.response.status}`);
let build = submitted.data;
const deadline = Date.now() + 120_000;
while (!SETTLED.has(build.status)) {
  check(Date.now() < deadline, `build ${build.id} is still ${build.status}`);
  await sleep(200);
  const polled = await kiln.GET("/api/v1/builds/{id}", { params: { path: { id: build.id } } });
  check(polled.data !== undefined, `poll the build: ${polled.response.status}`);
  build = polled.data;
}
check(build.status === "passed", `build ${build.id} ${build.status}`);
console.log(`build ${build.id} passed`);

// Its jobs, two to a page, following next_cursor until it is null.
const jobs: Job[] = [];
let after: string | undefined;
let pages = 0;
for (;;) {
  const page = await kiln.GET("/api/v1/builds/{id}/jobs", {
    params: { path: { id: build.id }, query: { limit: 2, after } },
  });
  check(page.data !== undefined, `list the jobs: ${page.response.status}`);
  pages += 1;
  jobs.push(...page.data._embedded.jobs);
  if (page.data.next_cursor === null) break;
  after = page.data.next_cursor;
}
check(pages === 2, `three jobs came in ${pages} pages of two`);
check(jobs.map((j) => j.name).join() === "greet,compare,package", "the jobs are not the three");
check(jobs.every((j) => j.status === "passed"), "a job did not pass");
const output = await kiln.GET("/api/v1/builds/{id}/jobs/{job_id}/output", {
  params: { path: { id: build.id, job_id: jobs[0].id } },
  parseAs: "text",
});
check(output.data?.includes(GREETING) === true, `the output was ${output.data}`);
console.log(`${jobs.length} jobs in ${pages} pages; the first said "${GREETING}"`);

// The artifact, listed and downloaded, its bytes checked against its SHA-256.
const listed = await kiln.GET("/api/v1/builds/{id}/artifacts", {
  params: { path: { id: build.id } },
});
check(listed.data !== undefined, `list the artifacts: ${listed.response.status}`);
const [artifact] = listed.data._embedded.artifacts;
check(artifact?.name === "out.txt", "the artifact is not out.txt");
const download = await kiln.GET("/api/v1/builds/{id}/artifacts/{artifact_id}/content", {
  params: { path: { id: build.id, artifact_id: artifact.id } },
  parseAs: "arrayBuffer",
});
check(download.data !== undefined, `download the artifact: ${download.response.status}`);
const content = new Uint8Array(download.data);
check(new TextDecoder().decode(content) === ARTIFACT, "the artifact holds other bytes");
check(sha256(content) === artifact.sha256, "the artifact's SHA-256 differs");
console.log(`artifact ${artifact.name}: ${content.length} bytes, SHA-256 as listed`);

// An object: raw bytes up (application/octet-stream), and a byte range of them back.
const uploaded = await kiln.POST("/api/v1/objects", {
  params: { query: { name: `data-${id}.bin`, namespace_id: namespace.id } },
  body: new Blob([UPLOAD]),
  bodySerializer: (bytes) => bytes, // sent as they are, not as JSON
  headers: { "Content-Type": "application/octet-stream" },
});
check(uploaded.data !== undefined, `upload an object: ${uploaded.response.status}`);
const stored = uploaded.data;
check(stored.sha256 === sha256(UPLOAD), "the object's SHA-256 differs");
const part = await kiln.GET("/api/v1/objects/{id}/content", {
  params: { path: { id: stored.id }, header: { Range: "bytes=100-199" } },
  parseAs: "arrayBuffer",
});
check(part.response.status === 206, `a Range answered ${part.response.status}`);
check(part.data !== undefined, "a range without bytes");
check(sha256(new Uint8Array(part.data)) === sha256(UPLOAD.slice(100, 200)), "other bytes");
console.log(`object ${stored.name}: ${stored.size} bytes up, bytes 100-199 back`);

// A build that does not exist: the problem, typed, has a code to branch on.
const missing = await kiln.GET("/api/v1/builds/{id}", {
  params: { path: { id: MISSING_BUILD } },
});
check(missing.response.status === 404, `a missing build answered ${missing.response.status}`);
check(missing.error?.code === "not_found", "not a not_found problem");
console.log("a missing build is 404 not_found");
console.log("scenario passed");
