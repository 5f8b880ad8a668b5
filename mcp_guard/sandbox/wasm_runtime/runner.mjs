// Runs Python code in Pyodide for the mcp-guard wasm sandbox backend (mcp_guard/sandbox/wasm.py).
//
// Usage: node <flags set by wasm.py> runner.mjs PYODIDE_DIR HARNESS_PY ALLOWED_IMPORTS
//
// The gateway starts one process per sandbox under Node's permission model (file reads limited to
// the Pyodide folder and this folder's files, no file writes, no child processes) and with the
// import hook in import_hooks.mjs. This program loads Pyodide once, then closes what Node's
// permission model leaves open to code that reaches JavaScript from Python: the network globals,
// the Pyodide calls that mount host folders, open Node sockets or load scripts, and the `js` module
// (its globals object is empty). harness.py then cuts Python off from JavaScript and enforces the
// import allow list.
//
// Protocol. The gateway writes one JSON line per run to stdin: {"code": "..."}. This program writes
// only JSON lines to stdout, one object each:
//   {"type": "ready"}                          Pyodide is loaded; runs may start
//   {"type": "stdout" | "stderr", "text": ...} output of the running code, in order
//   {"type": "done", "report": {...}}          the run ended; report from harness.py
//   {"type": "failed", "reason": "..."}        loading failed, or the interpreter broke; the process exits
// The code's output is always wrapped in a frame, so it cannot forge a frame of its own. The process
// exits when stdin closes, so it does not outlive a gateway that dies while it is idle.

import { constants as fsConstants, readFileSync, writeSync } from "node:fs";
import { pathToFileURL } from "node:url";

// Largest piece of output in one frame, in bytes before JSON escaping.
const FRAME_BYTES = 65536;
// Largest request line accepted, in bytes; the gateway caps code far below this.
const MAX_REQUEST_BYTES = 64 * 1024 * 1024;
// Globals that reach the network, or modules, and that loaded Pyodide does not need.
const REMOVED_GLOBALS = [
  "fetch",
  "Request",
  "Response",
  "Headers",
  "FormData",
  "WebSocket",
  "EventSource",
  "require",
  "process",
];
// Pyodide API calls that reach the host (host folders, Node sockets, scripts, packages).
const REMOVED_API = [
  "mountNodeFS",
  "mountNativeFS",
  "useNodeSockFS",
  "loadPackage",
  "loadPackagesFromImports",
  "registerJsModule",
  "pyimport",
];
const REMOVED_INTERNAL_API = ["initializeNodeSockFS", "loadScript", "loadBinaryFile", "loadDynlib"];
// Emscripten's errno for "permission denied", raised when the code creates a socket.
const EACCES = 2;

const proc = process;
const [pyodideDir, harnessPath, allowedImports = ""] = proc.argv.slice(2);

function send(message) {
  writeAll(1, JSON.stringify(message) + "\n");
}

function writeAll(fd, text) {
  const data = Buffer.from(text, "utf8");
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += writeSync(fd, data, offset);
    } catch (error) {
      // stdout may be non-blocking; wait for the gateway to read instead of dropping output.
      if (error.code !== "EAGAIN") throw error;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }
}

function fail(reason) {
  send({ type: "failed", reason: String(reason).slice(0, 2000) });
  proc.exit(1);
}

function outputWriter(stream) {
  const decoder = new TextDecoder("utf-8");
  const write = (buffer) => {
    for (let start = 0; start < buffer.length; start += FRAME_BYTES) {
      const text = decoder.decode(buffer.subarray(start, start + FRAME_BYTES), { stream: true });
      if (text) send({ type: stream, text });
    }
    return buffer.length;
  };
  return { write, isatty: false };
}

async function loadInterpreter() {
  // Pyodide reads file-open flags through process.binding("constants"), which the permission
  // model forbids. The stand-in returns only those flags, and the original (which throws) comes back after loading.
  const binding = proc.binding;
  proc.binding = (name) => (name === "constants" ? { fs: fsConstants } : binding.call(proc, name));
  try {
    const { loadPyodide } = await import(pathToFileURL(`${pyodideDir}/pyodide.mjs`).href);
    return await loadPyodide({
      indexURL: `${pyodideDir}/`,
      jsglobals: Object.create(null),
      env: { HOME: "/home/pyodide" },
      stdout: () => {},
      stderr: () => {},
    });
  } finally {
    proc.binding = binding;
  }
}

function closeHostAccess(pyodide) {
  for (const name of REMOVED_GLOBALS) delete globalThis[name];
  const blocked = () => {
    throw new Error("not available in the mcp-guard sandbox");
  };
  for (const name of REMOVED_API) {
    Object.defineProperty(pyodide, name, { value: blocked, writable: false, configurable: false });
  }
  for (const name of REMOVED_INTERNAL_API) {
    if (pyodide._api) pyodide._api[name] = blocked;
  }
  const module = pyodide._module;
  if (module?.SOCKFS) {
    module.SOCKFS.createSocket = () => {
      throw new module.FS.ErrnoError(EACCES);
    };
  }
}

function startHarness(pyodide) {
  const namespace = pyodide.globals.get("dict")();
  pyodide.runPython(readFileSync(harnessPath, "utf8"), { globals: namespace, filename: "<mcp-guard-harness>" });
  pyodide.setStdout(outputWriter("stdout"));
  pyodide.setStderr(outputWriter("stderr"));
  pyodide.setStdin({ stdin: () => null });
  namespace.get("install_guard")(allowedImports);
  return namespace.get("run_code");
}

function runRequest(runCode, line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    fail("the request is not valid JSON");
  }
  if (typeof request?.code !== "string") fail("the request has no code");
  let report;
  try {
    report = runCode(request.code);
  } catch (error) {
    // An error that escapes harness.py comes from the interpreter itself, such as a fatal Pyodide
    // error or an overflowing JavaScript stack, so the interpreter cannot be trusted to run more code.
    fail(`the interpreter failed: ${error}`);
  }
  writeAll(1, `{"type":"done","report":${report}}\n`);
}

function serve(runCode) {
  let pending = Buffer.alloc(0);
  proc.stdin.on("data", (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    let newline;
    while ((newline = pending.indexOf(10)) !== -1) {
      const line = pending.subarray(0, newline).toString("utf8");
      pending = pending.subarray(newline + 1);
      runRequest(runCode, line);
    }
    if (pending.length > MAX_REQUEST_BYTES) fail("the request is too large");
  });
  proc.stdin.on("end", () => proc.exit(0));
}

let pyodide;
try {
  pyodide = await loadInterpreter();
  closeHostAccess(pyodide);
  const runCode = startHarness(pyodide);
  send({ type: "ready" });
  serve(runCode);
} catch (error) {
  fail(`Pyodide could not be loaded: ${error}`);
}
