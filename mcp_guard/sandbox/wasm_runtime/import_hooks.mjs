// ES module resolve hook for the wasm sandbox's Node.js process, loaded with --experimental-loader.
//
// Node 20's permission model restricts the file system, child processes and workers, but not the
// network, and a dynamic import() of a "data:" URL or of "node:net" works even with code generation
// from strings disabled. This hook lets the process import only what loading Pyodide needs: files
// (which the permission model limits to the Pyodide folder and this folder) and a few built-in
// modules without network access. Every other import is rejected.

const ALLOWED_BUILTINS = new Set([
  "crypto",
  "fs",
  "fs/promises",
  "module",
  "path",
  "url",
  "vm",
]);

export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith("file:") || specifier.startsWith("/") || specifier.startsWith(".")) {
    return nextResolve(specifier, context);
  }
  const builtin = specifier.startsWith("node:") ? specifier.slice("node:".length) : specifier;
  if (ALLOWED_BUILTINS.has(builtin)) {
    return nextResolve(specifier, context);
  }
  throw new Error(`the sandbox does not allow importing ${JSON.stringify(specifier.slice(0, 80))}`);
}
