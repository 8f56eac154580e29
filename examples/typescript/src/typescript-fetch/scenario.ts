// Kiln's API from TypeScript through the client openapi-generator makes with
// `-g typescript-fetch` (generated/typescript-fetch; the README says how to make it).
// The same walk as every example: who am I, a namespace (its create replayed with an
// Idempotency-Key, a stale If-Match refused), a build with an artifact followed to its
// end, its jobs page by page and their output, the artifact's bytes, an object uploaded
// and read back in part, and the problem `code` of a 404. Exits non-zero at the first
// answer that is not as it should be.
//
//   KILN_URL=https://127.0.0.1:8443 KILN_TOKEN=... NODE_EXTRA_CA_CERTS=.kiln/cert.pem \
//     node dist/src/typescript-fetch/scenario.js
import {
  BuildsApi,
  Configuration,
  type Job,
  NamespacesApi,
  ObjectsApi,
  ProblemCode,
  ProblemFromJSON,
  ResponseError,
  UsersApi,
  Visibility,
} from "../../generated/typescript-fetch/index.js";
import {
  ARTIFACT,
  Failed,
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

// A call that must fail: the status it failed with and the `code` of its problem, read
// with the generated model from the ResponseError the client throws.
async function refusal(call: Promise<unknown>): Promise<{ status: number; code: string }> {
  try {
    await call;
  } catch (error) {
    if (!(error instanceof ResponseError)) throw error;
    const problem = ProblemFromJSON(await error.response.json());
    return { status: error.response.status, code: String(problem.code) };
  }
  throw new Failed("a call that should have failed succeeded");
}

const { url, token } = server();
const configuration = new Configuration({ basePath: url, accessToken: token });
const users = new UsersApi(configuration);
const namespaces = new NamespacesApi(configuration);
const builds = new BuildsApi(configuration);
const objects = new ObjectsApi(configuration);
const id = suffix();

const me = await users.getAuthenticatedUser();
console.log(`signed in as ${me.username}`);

// A create, and the same create again with its Idempotency-Key: the first result.
const create = {
  namespaceCreate: { name: `ts-gen-${id}`, visibility: Visibility.Private },
  idempotencyKey: `namespace-${id}`,
};
const created = await namespaces.createNamespaceRaw(create);
check(created.raw.status === 201, `create answered ${created.raw.status}`);
const namespace = await created.value();
const replayed = await namespaces.createNamespaceRaw(create);
check(replayed.raw.status === 200, `the replay answered ${replayed.raw.status}`);
check((await replayed.value()).id === namespace.id, "the replay made another namespace");
check(replayed.raw.headers.get("Idempotent-Replayed") === "true", "not marked a replay");
console.log(`namespace ${namespace.path} (id ${namespace.id}), replayed with its key`);

// If-Match: a change with the current ETag is taken, one with an older ETag is 412.
const current = await namespaces.getNamespaceRaw({ id: namespace.id });
const etag = current.raw.headers.get("ETag");
check(etag !== null, "a namespace without an ETag");
const patch = (description: string) =>
  namespaces.updateNamespace({ id: namespace.id, namespacePatch: { description }, ifMatch: etag });
await patch("first");
const stale = await refusal(patch("second"));
check(stale.status === 412, `a stale If-Match answered ${stale.status}`);
check(stale.code === ProblemCode.PreconditionFailed, "not a precondition_failed problem");
console.log("a stale If-Match is 412 precondition_failed");

// A build, polled until it settles. Its status is an open enum: any string may come.
let build = await builds.submitBuild({ buildSubmission: { manifest: manifest(namespace.path) } });
const deadline = Date.now() + 120_000;
while (!SETTLED.has(String(build.status))) {
  check(Date.now() < deadline, `build ${build.id} is still ${String(build.status)}`);
  await sleep(200);
  build = await builds.getBuild({ id: build.id });
}
check(String(build.status) === "passed", `build ${build.id} ${String(build.status)}`);
console.log(`build ${build.id} passed`);

// Its jobs, two to a page, following nextCursor until it is null.
const jobs: Job[] = [];
let after: string | undefined;
let pages = 0;
for (;;) {
  const page = await builds.listBuildJobs({ id: build.id, limit: 2, after });
  pages += 1;
  jobs.push(...page.embedded.jobs);
  if (page.nextCursor === null) break;
  after = page.nextCursor;
}
check(pages === 2, `three jobs came in ${pages} pages of two`);
check(jobs.map((j) => j.name).join() === "greet,compare,package", "the jobs are not the three");
check(jobs.every((j) => String(j.status) === "passed"), "a job did not pass");
const output = await builds.getBuildJobOutput({ id: build.id, jobId: jobs[0].id });
check(output.includes(GREETING), `the output was ${output}`);
console.log(`${jobs.length} jobs in ${pages} pages; the first said "${GREETING}"`);

// The artifact, listed and downloaded, its bytes checked against its SHA-256.
const [artifact] = (await builds.listBuildArtifacts({ id: build.id })).embedded.artifacts;
check(artifact?.name === "out.txt", "the artifact is not out.txt");
const blob = await builds.getBuildArtifactContent({ id: build.id, artifactId: artifact.id });
const content = new Uint8Array(await blob.arrayBuffer());
check(new TextDecoder().decode(content) === ARTIFACT, "the artifact holds other bytes");
check(sha256(content) === artifact.sha256, "the artifact's SHA-256 differs");
console.log(`artifact ${artifact.name}: ${content.length} bytes, SHA-256 as listed`);

// An object: raw bytes up (application/octet-stream), and a byte range of them back.
const stored = await objects.createObject({
  body: new Blob([UPLOAD]),
  name: `data-${id}.bin`,
  namespaceId: namespace.id,
});
check(stored.sha256 === sha256(UPLOAD), "the object's SHA-256 differs");
const part = await objects.getObjectContentRaw({ id: stored.id, range: "bytes=100-199" });
check(part.raw.status === 206, `a Range answered ${part.raw.status}`);
const bytes = new Uint8Array(await (await part.value()).arrayBuffer());
check(sha256(bytes) === sha256(UPLOAD.slice(100, 200)), "the range held other bytes");
console.log(`object ${stored.name}: ${stored.size} bytes up, bytes 100-199 back`);

// A build that does not exist: the problem, typed, has a code to branch on.
const missing = await refusal(builds.getBuild({ id: MISSING_BUILD }));
check(missing.status === 404, `a missing build answered ${missing.status}`);
check(missing.code === ProblemCode.NotFound, "not a not_found problem");
console.log("a missing build is 404 not_found");
console.log("scenario passed");
