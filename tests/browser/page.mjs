// Drives the admin page in headless Chromium against a running orders
// example (`orders --serve --admin-addr ...`) and checks what an operator
// sees and does. Usage: node page.mjs BASE_URL SCREENSHOT_DIR
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, out] = process.argv.slice(2);
mkdirSync(out, { recursive: true });
const check = (ok, what) => {
  if (!ok) { console.error("FAIL: " + what); process.exit(1); }
  console.log("ok: " + what);
};
const api = async (path) => (await fetch(base + path)).json();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.on("pageerror", (e) => { console.error("FAIL: the page threw: " + e.message); process.exit(1); });

// The list shows the example's sagas, with their statuses.
await page.goto(base + "/");
await page.waitForSelector("tr.link");
const rows = await page.$$eval("tr.link", (rs) => rs.map((r) => r.innerText));
const listed = (await api("/v1/sagas")).sagas;
check(rows.length === listed.length && rows.length >= 5, `the list shows all ${listed.length} sagas`);
for (const status of ["COMMITTED", "COMPENSATED", "SUSPENDED"]) {
  check(rows.some((r) => r.includes(status)), `the list shows a ${status} saga`);
}
await page.screenshot({ path: `${out}/page-list.png`, fullPage: true });
console.log(`screenshot: ${out}/page-list.png`);

// A compensated saga's timeline shows its steps and its compensations.
let undone = null;
for (const s of listed.filter((s) => s.status === "COMPENSATED")) {
  const detail = await api("/v1/sagas/" + s.saga_id);
  if (detail.timeline.some((e) => e.call === "compensation" && e.result === "succeeded")) { undone = detail; break; }
}
check(undone !== null, "the example has a saga whose steps were compensated");
await page.goto(`${base}/#/saga/${undone.saga.saga_id}`);
await page.waitForSelector(".timeline .bar");
const lanes = await page.$$eval(".timeline .lane .name", (ns) => ns.map((n) => n.innerText));
for (const step of undone.saga.steps) check(lanes.includes(step.name), `the timeline has a lane for ${step.name}`);
const bars = await page.$$eval(".timeline .bar", (bs) => bs.map((b) => b.innerText));
check(bars.some((b) => b.includes("✓ compensation")), "the timeline shows the compensation that ran");
check(bars.some((b) => b.includes("✗ action")), "the timeline shows the step that failed");
await page.screenshot({ path: `${out}/page-saga.png`, fullPage: true });
console.log(`screenshot: ${out}/page-saga.png`);

// An operator action with a reason, from the page, changes the saga.
const waiting = (await api("/v1/manual")).manual_queue[0];
check(waiting !== undefined, "the manual queue holds the example's manual order");
await page.goto(`${base}/#/saga/${waiting.saga_id}`);
await page.waitForSelector("#waiting");
const why = await page.$eval("#waiting", (w) => w.innerText);
check(why.startsWith("waiting for an operator"), "the page says why the saga waits");
page.once("dialog", (d) => d.accept("customer agreed, from the page"));
await page.click('button[data-action="compensate_now"]');
await page.waitForSelector("#acted .notice");
const said = await page.$eval("#acted .notice", (n) => n.innerText);
check(said.includes("compensate_now recorded by"), "the page shows the action's result: " + said);
let after = null;
for (let i = 0; i < 50; i++) {
  after = await api("/v1/sagas/" + waiting.saga_id);
  if (after.saga.status === "COMPENSATED") break;
  await new Promise((r) => setTimeout(r, 100));
}
check(after.saga.status === "COMPENSATED", "the action compensated the saga");
const recorded = after.timeline.find((e) => e.kind === "operator_action");
check(recorded && recorded.reason === "customer agreed, from the page", "the reason is in the saga's history");
await page.reload();
await page.waitForSelector("h2 .s-COMPENSATED");
const undoneBars = await page.$$eval(".timeline .bar", (bs) => bs.map((b) => b.innerText));
check(undoneBars.some((b) => b.includes("✓ compensation")), "the timeline now shows the compensation the action ran");
await page.screenshot({ path: `${out}/page-acted.png`, fullPage: true });
console.log(`screenshot: ${out}/page-acted.png`);

await browser.close();
