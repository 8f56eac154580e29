// The openapi-typescript half of `npm run generate`: the contract's types for
// openapi-fetch, in <out>/kiln.ts. Raw bytes (`format: binary`: uploads and downloads)
// are typed as Blob, which fetch sends and returns as they are, rather than
// openapi-typescript's default `string`.
//
//   node generate.mjs [openapi.yaml] [out]     (defaults: ../../openapi.yaml generated)
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";
import ts from "typescript";

const [spec = "../../openapi.yaml", out = "generated"] = process.argv.slice(2);
const BLOB = ts.factory.createTypeReferenceNode(ts.factory.createIdentifier("Blob"));

const ast = await openapiTS(pathToFileURL(path.resolve(spec)), {
  transform(schema) {
    if (schema.format === "binary") return BLOB;
    return undefined;
  },
});
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, "kiln.ts"), astToString(ast));
console.log(`${path.join(out, "kiln.ts")} from ${spec}`);
