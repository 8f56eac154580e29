// What the TypeScript examples share: where the server is, the build they submit,
// and a way to stop at the first answer that is not as the contract says.
//
// Node's fetch trusts the certificate authorities in NODE_EXTRA_CA_CERTS, so a server
// with a self-signed certificate (`kiln serve` makes one) is reached with
// NODE_EXTRA_CA_CERTS=.kiln/cert.pem.
import { createHash, randomUUID } from "node:crypto";

export const GREETING = "hello from a generated client";
export const ARTIFACT = "built by a generated client\n";
// Statuses after which a build changes no more; any other, known or not, means wait.
export const SETTLED = new Set(["passed", "passed_with_failures", "failed", "killed", "timed_out"]);
export const MISSING_BUILD = 9007199254740991; // the largest id there is, and no build's
export const BUILD = 1; // what open-enums reads: a build with values no contract listed
export const UPLOAD = Uint8Array.from({ length: 1024 }, (_, i) => i % 256);

export class Failed extends Error {}

export function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Failed(what);
}

export interface Server {
  url: string;
  token: string;
}

export function server(): Server {
  const url = process.env.KILN_URL;
  const token = process.env.KILN_TOKEN;
  if (!url || !token) throw new Error("KILN_URL and KILN_TOKEN say which server, and who calls it");
  return { url, token };
}

export function suffix(): string {
  return randomUUID().replaceAll("-", "").slice(0, 10);
}

export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Two test jobs and a package job that leaves one artifact.
export function manifest(namespacePath: string): string {
  return [
    `namespace: ${namespacePath}`,
    "driver:",
    "  type: local",
    "stages: [test, package]",
    "jobs:",
    "- stage: test",
    "  name: greet",
    `  commands: ['echo "${GREETING}"']`,
    "- stage: test",
    "  name: compare",
    "  commands: [test 2 -gt 1]",
    "- stage: package",
    "  name: package",
    "  commands:",
    "  - mkdir -p dist",
    "  - printf 'built by a generated client\\n' > dist/out.txt",
    "  artifacts:",
    "  - dist/out.txt => out.txt",
    "",
  ].join("\n");
}
