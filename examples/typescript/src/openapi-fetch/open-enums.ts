// An openapi-fetch client generated today reads values that Kiln adds tomorrow: the
// contract types each enum in a response as its known values or any other string
// (`BuildStatusValue`), so a status, driver or problem code added later arrives as a
// string. Reads a build and a problem from a server that sends values no contract
// listed, and prints what it read.
import createClient from "openapi-fetch";
import type { components, paths } from "../../generated/kiln.js";
import { BUILD, MISSING_BUILD, check, server } from "../common.js";

type Known = components["schemas"]["BuildStatus"];
const KNOWN: readonly string[] = [
  "queued",
  "running",
  "passed",
  "passed_with_failures",
  "failed",
  "killed",
  "timed_out",
] satisfies Known[];

const { url, token } = server();
const kiln = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${token}` } });

const { data: build } = await kiln.GET("/api/v1/builds/{id}", { params: { path: { id: BUILD } } });
check(build !== undefined, "no build");
if (KNOWN.includes(build.status)) console.log(`build ${build.id} is ${build.status}`);
else console.log(`build ${build.id} is "${build.status}", which this client does not know yet`);
const { error } = await kiln.GET("/api/v1/builds/{id}", {
  params: { path: { id: MISSING_BUILD } },
});
console.log(
  JSON.stringify({
    status: build.status,
    trigger: build.trigger,
    driver: build.driver,
    jobs: build._embedded.jobs.map((job) => job.status),
    code: error?.code,
  }),
);
