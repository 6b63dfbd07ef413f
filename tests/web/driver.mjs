// Headless-Chromium driver for tests/watch_chromium.rs.
//
// The Rust test owns the scenario (server, publisher, faults, assertions); this script only drives
// the browser. Protocol: one JSON command per line on stdin, one JSON answer per line on stdout
// ({"id", "ok": true, "value"} or {"id", "ok": false, "error"}); anything else goes to stderr.
//
//   {"cmd": "open", "url": "..."}                       new tab, goto, start recording requests
//     optional "pin_whep": URL — every playback document the tab loads has webrtc.whep set to URL
//     (what a document fetched a moment before its node filled up says; the rest is the server's)
//   {"cmd": "eval", "expr": "js expression"}            value of the expression in the page
//   {"cmd": "wait", "expr": "...", "timeout_ms": N}     until the expression is truthy; its value
//   {"cmd": "screenshot", "path": "..."}                PNG of the tab
//   {"cmd": "requests", "contains": "..."}              request URLs so far (optionally filtered)
//   {"cmd": "console"}                                  the tab's console lines so far
//   {"cmd": "close"}                                    close the browser and exit
//
// Environment: CHROMIUM (default /usr/bin/chromium), USER_DATA_DIR (required: a fresh directory),
// PLAYWRIGHT_CORE (path to playwright-core's index.mjs).

import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';

const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const userDataDir = process.env.USER_DATA_DIR;
const pwPath = process.env.PLAYWRIGHT_CORE;
if (!userDataDir || !pwPath) {
  console.error('driver.mjs: USER_DATA_DIR and PLAYWRIGHT_CORE must be set');
  process.exit(2);
}
const { chromium } = await import(pathToFileURL(pwPath).href);

// The flags of ../shared/GUIDE.md §4; headless comes from Playwright (--headless).
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: chromiumPath,
  headless: true,
  viewport: { width: 960, height: 540 },
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    // A camera and microphone for the WHIP publisher test (synthetic; no prompt).
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
  ],
});

let page = null;
let requests = [];
let consoleLines = [];

function send(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function handle(msg) {
  switch (msg.cmd) {
    case 'open': {
      if (page) await page.close();
      requests = [];
      consoleLines = [];
      page = await context.newPage();
      if (msg.pin_whep) {
        await page.route(/\/api\/v1\/streams\/[^/]+\/playback/, async (route) => {
          const resp = await route.fetch();
          const json = await resp.json();
          if (json.webrtc) json.webrtc.whep = msg.pin_whep;
          await route.fulfill({ response: resp, json });
        });
      }
      page.on('request', (r) => requests.push(`${r.method()} ${r.url()}`));
      page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
      const resp = await page.goto(msg.url, { waitUntil: 'domcontentloaded', timeout: 15000 });
      return { status: resp ? resp.status() : null };
    }
    case 'eval':
      return page.evaluate(msg.expr);
    case 'wait': {
      // Polls page.evaluate (CDP Runtime.evaluate) rather than page.waitForFunction, which
      // compiles the expression inside the page and so is refused by the page's CSP (no eval).
      const t0 = Date.now();
      const timeout = msg.timeout_ms || 10000;
      let last = null;
      for (;;) {
        try {
          last = await page.evaluate(msg.expr);
        } catch (e) {
          last = `error: ${e.message}`;
        }
        if (last && !(typeof last === 'string' && last.startsWith('error: '))) {
          return { value: last, waited_ms: Date.now() - t0 };
        }
        if (Date.now() - t0 > timeout) {
          throw new Error(`timed out after ${timeout} ms; last value: ${JSON.stringify(last)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    case 'screenshot':
      await page.screenshot({ path: msg.path });
      return msg.path;
    case 'requests':
      return msg.contains ? requests.filter((u) => u.includes(msg.contains)) : requests;
    case 'console':
      return consoleLines;
    case 'close':
      await context.close();
      send({ id: msg.id, ok: true, value: null });
      process.exit(0);
      break;
    default:
      throw new Error(`unknown command ${msg.cmd}`);
  }
  return null;
}

send({ id: 0, ok: true, value: { ready: true, chromium: context.browser()?.version() ?? null } });

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    send({ id: null, ok: false, error: `bad JSON: ${e.message}` });
    continue;
  }
  try {
    const value = await handle(msg);
    send({ id: msg.id, ok: true, value: value === undefined ? null : value });
  } catch (e) {
    send({ id: msg.id, ok: false, error: String(e && e.message ? e.message : e) });
  }
}
await context.close();
