#!/usr/bin/env node
// Open an mcp-guard approval link in headless Chromium, press one of its buttons, then open the
// same link again, so tests can check the page as a person's browser shows it.
//
// Usage: node tests/node/approve_in_browser.mjs URL CHOICE
//
// CHOICE is the label of the button to press ("approve once", "deny", ...). Chromium is Debian's
// /usr/bin/chromium, or the one named by $CHROMIUM. It prints one JSON document to stdout:
//
//   {"first": {"status", "title", "text"}, "after": {"status", "title", "text"},
//    "again": {"status", "title"}, "external_requests": [URLs the page tried to load elsewhere]}
//
// and exits 0; any failure prints {"fatal": MESSAGE} and exits 1.

import process from "node:process";

import { chromium } from "playwright-core";

const TIMEOUT_MS = 20000;

async function main([url, choice]) {
  if (!url || !choice) {
    throw new Error("usage: node approve_in_browser.mjs URL CHOICE");
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // Tests run as root, where Chromium's own sandbox cannot start.
    args: ["--no-sandbox"],
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    const origin = new URL(url).origin;
    const externalRequests = [];
    page.on("request", (request) => {
      if (!request.url().startsWith(origin)) {
        externalRequests.push(request.url());
      }
    });

    const first = await page.goto(url);
    const firstView = { status: first.status(), title: await page.title(), text: await page.innerText("body") };
    const [response] = await Promise.all([
      page.waitForNavigation(),
      page.click(`button[value="${choice}"]`),
    ]);
    const afterView = { status: response.status(), title: await page.title(), text: await page.innerText("body") };
    const again = await page.goto(url);
    const againView = { status: again.status(), title: await page.title() };
    return { first: firstView, after: afterView, again: againView, external_requests: externalRequests };
  } finally {
    await browser.close();
  }
}

main(process.argv.slice(2)).then(
  (output) => {
    process.stdout.write(JSON.stringify(output) + "\n");
  },
  (error) => {
    process.stdout.write(JSON.stringify({ fatal: String(error && error.message ? error.message : error) }) + "\n");
    process.exitCode = 1;
  },
);
