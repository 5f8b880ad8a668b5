#!/usr/bin/env node
// Drive an MCP server over stdio with the TypeScript SDK's client, so tests can check that a
// non-Python client works against it.
//
// Usage: node tests/node/ts_client.mjs SCRIPT.json -- COMMAND [ARGS...]
//
// The driver spawns COMMAND, runs the initialize handshake (TypeScript SDK 1.32.2 offers protocol
// version 2025-11-25), then runs the steps of SCRIPT.json in order:
//
//   {
//     "steps": [
//       {"op": "list_tools"},
//       {"op": "call_tool", "name": "echo", "arguments": {"text": "hi"}, "progress": true},
//       {"op": "list_prompts"},
//       {"op": "get_prompt", "name": "summarize", "arguments": {"text": "hi"}},
//       {"op": "list_resources"},
//       {"op": "read_resource", "uri": "legacy://motd"}
//     ],
//     "elicitation": {"action": "accept", "content": {"approve": true}},
//     "timeout_ms": 60000
//   }
//
// "elicitation" is optional. When it is set, the client declares the form elicitation capability
// and responds to every elicitation request with that action and content. "timeout_ms" is optional and
// bounds the handshake and each request (the SDK default is 60000). A call_tool step with
// "progress": true sends a progress token and records the notifications it gets back.
//
// It prints one JSON document to stdout when done and exits 0:
//
//   {"server": {"name", "version"},
//    "results": [one entry per step: the result as received, or {"error": {"code", "message"}}],
//    "elicitations": [the params of each elicitation request, in arrival order],
//    "progress": [{"step", "progress", "total", "message"} for steps with "progress": true]}
//
// If the server cannot be started or the handshake fails, it prints {"fatal": MESSAGE} and exits 1.
// A bad command line or script prints {"fatal": MESSAGE} and exits 2. Logs, including the
// server's stderr, go to stderr. The server inherits this process's environment and working
// directory, unlike the SDK default, which passes on only a few variables such as PATH and HOME.

import { readFile } from "node:fs/promises";
import process from "node:process";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { ElicitRequestSchema, ProgressNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const CLIENT_INFO = { name: "mcp-guard-ts-test-client", version: "0.1.0" };
const ELICITATION_ACTIONS = new Set(["accept", "decline", "cancel"]);
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
// Bounds list_tools against a server that keeps returning a cursor.
const MAX_TOOL_PAGES = 100;
const PROGRESS_TOKEN_PATTERN = /^step-(\d+)$/;
const USAGE = "usage: node ts_client.mjs SCRIPT.json -- COMMAND [ARGS...]";

class UsageError extends Error {}

async function main(argv) {
  const { scriptPath, command, args } = parseArgs(argv);
  const script = validateScript(await readScript(scriptPath));
  const requestOptions = script.timeout_ms === undefined ? {} : { timeout: script.timeout_ms };

  const elicitations = [];
  const progress = [];
  const client = createClient(script.elicitation, elicitations, progress);
  const transport = new StdioClientTransport({
    command,
    args,
    env: inheritedEnvironment(),
    stderr: "inherit",
  });
  try {
    await client.connect(transport, requestOptions);
  } catch (error) {
    await client.close();
    return finish({ fatal: `failed to connect to ${command}: ${describe(error)}` }, EXIT_FAILURE);
  }

  const results = [];
  for (const [index, step] of script.steps.entries()) {
    results.push(await runStep(client, step, index, requestOptions));
  }
  const server = client.getServerVersion() ?? {};
  await client.close();

  return finish(
    { server: { name: server.name, version: server.version }, results, elicitations, progress },
    0,
  );
}

function parseArgs(argv) {
  const separator = argv.indexOf("--");
  if (separator !== 1 || argv.length < 3) {
    throw new UsageError(USAGE);
  }
  return { scriptPath: argv[0], command: argv[2], args: argv.slice(3) };
}

async function readScript(path) {
  let text;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    throw new UsageError(`failed to read script ${path}: ${describe(error)}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UsageError(`script ${path} is not valid JSON: ${describe(error)}`);
  }
}

// Reject a malformed script before spawning anything, so a typo in a test fails with a clear message.
function validateScript(script) {
  if (!isObject(script) || !Array.isArray(script.steps)) {
    throw new UsageError('the script must be a JSON object with a "steps" array');
  }
  for (const [index, step] of script.steps.entries()) {
    validateStep(step, index);
  }
  if (script.elicitation !== undefined) {
    const { action, content } = isObject(script.elicitation) ? script.elicitation : {};
    if (!ELICITATION_ACTIONS.has(action)) {
      throw new UsageError(
        `"elicitation.action" must be accept, decline or cancel, got ${JSON.stringify(action)}`,
      );
    }
    if (content !== undefined && !isObject(content)) {
      throw new UsageError('"elicitation.content" must be an object');
    }
  }
  if (script.timeout_ms !== undefined && !(Number.isInteger(script.timeout_ms) && script.timeout_ms > 0)) {
    throw new UsageError(`"timeout_ms" must be a positive integer, got ${JSON.stringify(script.timeout_ms)}`);
  }
  return script;
}

const REQUIRED_STEP_FIELDS = {
  list_tools: [],
  call_tool: ["name"],
  list_prompts: [],
  get_prompt: ["name"],
  list_resources: [],
  read_resource: ["uri"],
};

function validateStep(step, index) {
  const required = isObject(step) ? REQUIRED_STEP_FIELDS[step.op] : undefined;
  if (required === undefined) {
    const ops = Object.keys(REQUIRED_STEP_FIELDS).join(", ");
    throw new UsageError(
      `step ${index} has an unknown op ${JSON.stringify(step?.op)}, expected one of ${ops}`,
    );
  }
  for (const field of required) {
    if (typeof step[field] !== "string") {
      throw new UsageError(`step ${index} (${step.op}) is missing the string field "${field}"`);
    }
  }
  if (step.arguments !== undefined && !isObject(step.arguments)) {
    throw new UsageError(`step ${index} (${step.op}) has "arguments" that are not an object`);
  }
}

function createClient(elicitation, elicitations, progress) {
  const capabilities = elicitation === undefined ? {} : { elicitation: { form: {} } };
  const client = new Client(CLIENT_INFO, { capabilities });
  // Replaces the SDK's own progress handler, which drops a notification that arrives just before the
  // response to its request. The SDK settles a response at once but runs notification handlers a
  // microtask later.
  client.setNotificationHandler(ProgressNotificationSchema, (notification) => {
    const { progressToken, ...rest } = notification.params;
    const match = PROGRESS_TOKEN_PATTERN.exec(String(progressToken));
    progress.push({ step: match ? Number(match[1]) : null, ...rest });
  });
  if (elicitation !== undefined) {
    client.setRequestHandler(ElicitRequestSchema, async (request) => {
      elicitations.push(request.params);
      const answer = { action: elicitation.action };
      if (elicitation.content !== undefined) {
        answer.content = elicitation.content;
      }
      return answer;
    });
  }
  return client;
}

function inheritedEnvironment() {
  return Object.fromEntries(Object.entries(process.env).filter(([, value]) => value !== undefined));
}

async function runStep(client, step, index, requestOptions) {
  try {
    switch (step.op) {
      case "list_tools":
        return await listAllTools(client, requestOptions);
      case "call_tool":
        return await client.callTool(callToolParams(step, index), undefined, requestOptions);
      case "list_prompts":
        return await client.listPrompts(undefined, requestOptions);
      case "get_prompt":
        return await client.getPrompt({ name: step.name, arguments: step.arguments ?? {} }, requestOptions);
      case "list_resources":
        return await client.listResources(undefined, requestOptions);
      case "read_resource":
        return await client.readResource({ uri: step.uri }, requestOptions);
    }
  } catch (error) {
    // McpError carries the JSON-RPC code, but other failures (for example a closed transport) have none.
    console.error(`ts_client: step ${index} (${step.op}) failed: ${describe(error)}`);
    return { error: { code: typeof error?.code === "number" ? error.code : null, message: describe(error) } };
  }
}

// Sets the progress token itself, instead of the SDK's onprogress option, so that the token names the step.
function callToolParams(step, index) {
  const params = { name: step.name, arguments: step.arguments ?? {} };
  if (step.progress) {
    params._meta = { progressToken: `step-${index}` };
  }
  return params;
}

async function listAllTools(client, requestOptions) {
  const tools = [];
  let cursor;
  for (let pages = 0; pages < MAX_TOOL_PAGES; pages++) {
    const page = await client.listTools(cursor === undefined ? undefined : { cursor }, requestOptions);
    tools.push(...page.tools);
    cursor = page.nextCursor;
    if (cursor === undefined) {
      return { tools };
    }
  }
  throw new Error(`tools/list returned a next cursor on each of ${MAX_TOOL_PAGES} pages`);
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(error) {
  return error instanceof Error ? error.message : String(error);
}

// Exit only once stdout has drained, because a pipe may still hold the document when exit() runs.
function finish(document, exitCode) {
  process.stdout.write(`${JSON.stringify(document)}\n`, () => process.exit(exitCode));
}

main(process.argv.slice(2)).catch((error) => {
  const usage = error instanceof UsageError;
  if (!usage) {
    console.error(error);
  }
  finish({ fatal: describe(error) }, usage ? EXIT_USAGE : EXIT_FAILURE);
});
