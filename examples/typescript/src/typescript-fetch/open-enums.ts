// A typescript-fetch client generated today reads values that Kiln adds tomorrow: the
// contract types each enum in a response as its known values or any other string
// (`BuildStatusValue`), and the client passes any string through. Reads a build and a
// problem from a server that sends values no contract listed, and prints what it read.
import {
  BuildStatus,
  BuildsApi,
  Configuration,
  ProblemFromJSON,
  ResponseError,
} from "../../generated/typescript-fetch/index.js";
import { BUILD, MISSING_BUILD, server } from "../common.js";

const KNOWN: readonly string[] = Object.values(BuildStatus);

const { url, token } = server();
const builds = new BuildsApi(new Configuration({ basePath: url, accessToken: token }));

const build = await builds.getBuild({ id: BUILD });
const status = String(build.status);
if (KNOWN.includes(status)) console.log(`build ${build.id} is ${status}`);
else console.log(`build ${build.id} is "${status}", which this client does not know yet`);
let code: string | undefined;
try {
  await builds.getBuild({ id: MISSING_BUILD });
} catch (error) {
  if (!(error instanceof ResponseError)) throw error;
  code = String(ProblemFromJSON(await error.response.json()).code);
}
console.log(
  JSON.stringify({
    status,
    trigger: String(build.trigger),
    driver: String(build.driver),
    jobs: build.embedded.jobs.map((job) => String(job.status)),
    code,
  }),
);
