// Debian's firefox-esr, driven over WebDriver BiDi by puppeteer-core, for the Python browser tests
// (tests/e2e/firefox.py). One JSON request per line on stdin, one JSON reply per line on stdout:
//   {"id": 1, "op": "newPage"}                       -> {"id": 1, "result": 0}
//   {"id": 2, "op": "goto", "page": 0, "url": "..."} -> {"id": 2, "result": null}
// or {"id": N, "error": "..."}. Selectors are puppeteer's (CSS, "::-p-aria(...)", "::-p-text(...)").
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

const PREFS = {
  // Fake camera and microphone, no permission prompt, ICE on loopback with plain host addresses.
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  // Nothing leaves the machine: names resolve to loopback; telemetry, remote settings, safe
  // browsing, updates and captive-portal checks are off.
  // Sound may start without a click first (a test feeds speech to the microphone through Web Audio).
  "media.autoplay.default": 0,
  "media.autoplay.block-webaudio": false,
  "network.dns.forceResolve": "127.0.0.1",
  "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false,
  "toolkit.telemetry.enabled": false,
  "datareporting.healthreport.uploadEnabled": false,
  "datareporting.policy.dataSubmissionEnabled": false,
  "browser.safebrowsing.malware.enabled": false,
  "browser.safebrowsing.phishing.enabled": false,
  "browser.safebrowsing.downloads.enabled": false,
  "app.update.enabled": false,
  "app.normandy.enabled": false,
  "services.settings.server": "http://127.0.0.1:9/",
  "extensions.getAddons.cache.enabled": false,
  "browser.region.network.url": "",
};

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX ?? "/usr/bin/firefox-esr",
  headless: process.env.FIREFOX_HEADLESS !== "0",
  extraPrefsFirefox: PREFS,
  defaultViewport: { width: 1280, height: 720 },
});
const pages = [];
const errors = [];  // per page: uncaught errors of its scripts

async function perform(request) {
  const page = pages[request.page];
  const timeout = request.timeout ?? 15000;
  switch (request.op) {
    case "newPage": {
      const context = await browser.createBrowserContext();  // its own cookies and storage
      const created = await context.newPage();
      const index = pages.push(created) - 1;
      errors[index] = [];
      created.on("pageerror", (error) => errors[index].push(String(error?.message ?? error)));
      created.on("dialog", (dialog) => { errors[index].push(`dialog: ${dialog.message()}`); dialog.dismiss(); });
      return index;
    }
    case "preload":  // a script that runs before the page's own, in every document of the page
      await page.evaluateOnNewDocument(request.source);
      return null;
    case "goto":
      await page.goto(request.url, { timeout });
      return null;
    case "click":
      await page.locator(request.selector).setTimeout(timeout).click();
      return null;
    case "fill":
      await page.locator(request.selector).setTimeout(timeout).fill(request.value);
      return null;
    case "waitFor":
      await page.waitForSelector(request.selector, { timeout, visible: request.visible ?? true,
                                                     hidden: request.hidden ?? false });
      return null;
    case "evaluate":  // a function's source, called with one JSON argument
      return await page.evaluate(`(${request.source})(${JSON.stringify(request.arg ?? null)})`);
    case "screenshot":
      await page.screenshot({ path: request.path });
      return null;
    case "errors":
      return errors[request.page];
    case "closePage":
      await page.browserContext().close();
      pages[request.page] = null;
      return null;
    case "version":
      return await browser.version();
    default:
      throw new Error(`unknown op ${request.op}`);
  }
}

const reply = (message) => process.stdout.write(JSON.stringify(message) + "\n");
reply({ ready: await browser.version() });
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const request = JSON.parse(line);
  try {
    reply({ id: request.id, result: (await perform(request)) ?? null });
  } catch (error) {
    reply({ id: request.id, error: String(error?.message ?? error) });
  }
}
await browser.close();
