// Drives My Portal in headless Chromium against a real directory and real nodes,
// which tests/tests/portal.rs has started. Everything it needs comes from the
// environment; it exits non-zero at the first thing that does not hold.
import { chromium } from "playwright-core";
import axe from "axe-core";
import { mkdirSync } from "node:fs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const portal = env("PORTAL_URL");
const medicalId = env("MEDICAL_ID");
const code = env("ACTIVATION_CODE");
const requesterApi = env("REQUESTER_API");
const requesterToken = env("REQUESTER_TOKEN");
const requesterCode = env("REQUESTER_CODE");
const sourceCode = env("SOURCE_CODE");
const shots = env("SCREENSHOTS");
const operatorCert = env("OPERATOR_CERT");
const operatorKey = env("OPERATOR_KEY");
// Where the registry runs apart from the exchange authority (docs/roles.md), its own
// front and CA serve the persons' part of the console; My Portal and the institutions
// are the authority's, at PORTAL_URL.
const registry = process.env.REGISTRY_URL || portal;
const split = registry !== portal;
const registryCert = process.env.REGISTRY_OPERATOR_CERT || operatorCert;
const registryKey = process.env.REGISTRY_OPERATOR_KEY || operatorKey;
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`failed: ${what}`);
  console.log(`ok: ${what}`);
}

// A fetch by the requester's EMR through its node's local API.
async function fetchRecords(purpose, reason) {
  const body = { medical_id: medicalId, from: sourceCode, purpose };
  if (reason) body.reason = reason;
  const r = await fetch(`${requesterApi}/exchange/fetch`, {
    method: "POST",
    headers: { authorization: `Bearer ${requesterToken}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

// Each of `paths`, in Japanese and in English, at a phone's width and a desktop's:
// nothing scrolls sideways, axe-core finds no violations, and a screenshot is left.
// (page.evaluate runs outside the page's CSP, which forbids the page scripts.)
async function accessible(page, context, paths, base = portal) {
  const widths = [375, 1280];
  for (const lang of ["ja", "en"]) {
    await context.addCookies([{ name: "lang", value: lang, url: base }]);
    for (const path of paths) {
      await page.goto(`${base}${path}`);
      for (const width of widths) {
        await page.setViewportSize({ width, height: 900 });
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        check(overflow <= 0, `${path} (${lang}, ${width}px) does not scroll sideways`);
        await page.evaluate(axe.source);
        const found = await page.evaluate(() => axe.run(document, { resultTypes: ["violations"] }));
        const violations = found.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(" ")}`);
        check(violations.length === 0, `${path} (${lang}, ${width}px): axe-core finds no violations ${violations.join("; ")}`);
        const name = path.replaceAll("/", "-").replace(/^-|-$/g, "") || "root";
        await page.screenshot({ path: `${shots}/${name}-${lang}-${width}.png`, fullPage: true });
      }
    }
  }
  await context.addCookies([{ name: "lang", value: "ja", url: base }]);
  await page.setViewportSize({ width: 390, height: 844 });
}

// Submits a form by clicking `selector` and waits for the page it leads to, so that
// nothing after it can run against the page before.
async function submit(page, selector) {
  await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click(selector)]);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  // A phone-sized screen: the portal must be readable there.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true, // the agency's own CA; the HTTPS tests check the chain
    viewport: { width: 390, height: 844 },
    locale: "ja-JP",
  });
  const page = await context.newPage();
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  await accessible(page, context, ["/portal/", "/portal/activate", "/portal/forgot"]);

  // Activation with the code from the letter; a wrong code first.
  await page.goto(`${portal}/portal/activate`);
  await page.fill("#medical_id", medicalId);
  await page.fill("#code", "AAAA-BBBB-CCCC");
  await page.fill("#passphrase", "correct horse battery");
  await page.fill("#passphrase2", "correct horse battery");
  await submit(page, "#do-activate");
  check(await page.isVisible("#error"), "a wrong activation code is refused");
  await page.fill("#medical_id", medicalId);
  await page.fill("#code", code);
  await page.fill("#passphrase", "correct horse battery");
  await page.fill("#passphrase2", "correct horse battery");
  await submit(page, "#do-activate");
  await page.waitForURL("**/portal/home");
  const shown = (await page.textContent("#medical-id")).trim();
  check(shown.replaceAll("-", "") === medicalId.replaceAll("-", ""), `home shows the medical ID ${shown}`);
  if (split) {
    check((await page.textContent("#kept-apart")).includes("登録機関"), "the authority says the registry keeps name and insurance apart");
    check((await page.locator("#coverage").count()) === 0, "and shows none of them");
  } else {
    check((await page.textContent("#coverage")).includes("加入中"), "insurance in force, in Japanese");
  }
  await shot("home");

  // Sign out, then sign in with the passphrase; the activation code works once.
  await submit(page, "#logout");
  await page.waitForURL("**/portal/");
  await page.fill("#medical_id", medicalId);
  await page.fill("#passphrase", "wrong passphrase!");
  await submit(page, "#sign-in");
  check(await page.isVisible("#error"), "a wrong passphrase is refused");
  await page.fill("#medical_id", medicalId);
  await page.fill("#passphrase", "correct horse battery");
  await submit(page, "#sign-in");
  await page.waitForURL("**/portal/home");
  check(true, "signed in with the passphrase");

  // The checks the requester made today (three by medical ID, one by the card shown
  // with another person's ID) are one visit, dated in the era style.
  await page.goto(`${portal}/portal/history`);
  const visits = await page.locator("tr.visit").allTextContents();
  const there = visits.filter((v) => v.includes(requesterCode));
  check(there.length === 1, `service history lists ${requesterCode} once for today: ${visits}`);
  check(there[0].includes("令和") && there[0].includes("確認 4 回"), `the visit is dated 令和 and counts its checks: ${there[0]}`);
  await shot("history");

  // The consent form starts with nothing chosen and cannot be sent untouched; sharing
  // with everyone asks first, in a sentence, and cancelling records nothing.
  await page.goto(`${portal}/portal/consent`);
  for (const field of ["#action", "#institution", "#purpose"]) {
    check((await page.inputValue(field)) === "", `${field} starts with nothing chosen`);
  }
  check(!(await page.evaluate(() => document.querySelector("#consent-form").checkValidity())), "the untouched form cannot be sent");
  const decisions = await page.locator("tr.consent").count();
  await page.selectOption("#action", "grant");
  await page.selectOption("#institution", "all");
  await page.selectOption("#purpose", "all");
  await submit(page, "#save-consent");
  const sentence = await page.textContent("#consent-sentence");
  check(sentence.includes("すべての医療機関") && sentence.includes("研究は含みません"), `a wide grant is confirmed first: ${sentence}`);
  await shot("consent-confirm");
  await submit(page, "#cancel-consent");
  check((await page.locator("tr.consent").count()) === decisions, "cancelled, nothing recorded");

  // Consent decides the next grant.
  let r = await fetchRecords("treatment");
  check(r.status === 403 && r.body.reason === "no_consent", "without consent the fetch is refused");
  const setConsent = async (action) => {
    await page.goto(`${portal}/portal/consent`);
    await page.selectOption("#action", action);
    await page.selectOption("#institution", requesterCode);
    await page.selectOption("#purpose", "treatment");
    await submit(page, "#save-consent");
    await page.waitForURL("**/portal/consent");
  };
  await setConsent("grant");
  r = await fetchRecords("treatment");
  check(r.status === 200 && r.body.resourceType === "Bundle", "after granting consent the fetch is served");
  await setConsent("revoke");
  r = await fetchRecords("treatment");
  check(r.status === 403 && r.body.reason === "no_consent", "after revoking consent the next fetch is refused");
  await setConsent("grant");
  r = await fetchRecords("treatment");
  check(r.status === 200, "granted again, served again");
  const now = await page.textContent("#consent-now");
  check(now.includes(requesterCode) && now.includes("診療のために閲覧できます"), `the present state is said in a sentence: ${now}`);
  check(now.includes("ほかのすべての医療機関は、あなたの記録を閲覧できません"), "and what everyone else can do");
  await shot("consent");

  // Break-glass access shows, flagged, in the access log, each line proved.
  r = await fetchRecords("emergency", "意識不明で救急搬送 / unconscious on arrival");
  check(r.status === 200, "emergency fetch with a reason is served");
  await page.goto(`${portal}/portal/access`);
  check((await page.locator(".emergency").count()) > 0, "emergency access is flagged");
  const proofs = await page.locator(".proof").allTextContents();
  check(proofs.length > 0 && proofs.every((p) => p.includes("✔")), `every access entry is proved (${proofs.length})`);
  check((await page.textContent("main")).includes("意識不明で救急搬送"), "the written reason is shown");
  const said = await page.locator("tr.access").allTextContents();
  check(said.some((l) => l.includes("診療のために") && l.includes("病名・検査結果") && l.includes("閲覧しました")),
    `an exchange is one sentence naming the kinds of records: ${said[0]}`);
  await shot("access");
  await accessible(page, context, ["/portal/home", "/portal/history", "/portal/access", "/portal/consent"]);
  await page.goto(`${portal}/portal/access`);

  // English on request.
  await submit(page, "#lang");
  await page.waitForURL("**/portal/access");
  check((await page.getAttribute("html", "lang")) === "en", "English switch");
  check((await page.textContent("h1")).includes("Access log"), "English page title");
  await shot("access-en");
  console.log("portal: all checks passed");

  // The operator console, with the operator's client certificate: one console, or the
  // registry's (persons, cases) and the authority's (institutions) when split.
  const consoleAt = async (base, certPath, keyPath) => {
    const ctx = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 1100, height: 900 },
      clientCertificates: [{ origin: new URL(base).origin, certPath, keyPath }],
    });
    return { ctx, page: await ctx.newPage() };
  };
  const reg = await consoleAt(registry, registryCert, registryKey);
  const auth = split ? await consoleAt(portal, operatorCert, operatorKey) : reg;
  const op = reg.page;
  const opShot = (name) => op.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  await op.goto(`${registry}/operator/`);
  check((await op.textContent("#operator")).includes("operator sato"), "the console knows the operator from the certificate");
  await op.fill("#q", medicalId);
  await submit(op, "#search button");
  await op.waitForURL("**/operator/person?**");
  const person = await op.textContent("pre.person");
  check(person.includes(requesterCode), "the person's page shows coverages, history and service use");
  await opShot("console-person");

  // A case shows both sides with the differing fields marked and what each action does.
  await op.goto(`${registry}/operator/cases?kind=conflict`);
  check((await op.locator("div.case[id^=mismatch-]").count()) === 0, "the queue filters by kind");
  await op.goto(`${registry}/operator/cases`);
  const mismatch = op.locator("div.case[id^=mismatch-]").first();
  check((await mismatch.locator("table.compare tr.differs").count()) > 0, "a mismatch compares the two people, differences marked");
  check((await mismatch.locator("ul.effects li").count()) === 2, "and says what each action will change");
  const caseId = await mismatch.getAttribute("id");
  await mismatch.locator("select[name=action]").selectOption("keep");
  await mismatch.locator("input[name=reason]").fill("本人確認の結果、登録どおり / registry confirmed");
  await opShot("console-cases");
  await Promise.all([op.waitForNavigation({ waitUntil: "load" }), mismatch.locator("button").click()]);
  await op.waitForURL("**/operator/cases");
  check((await op.locator(`#${caseId}`).count()) === 0, `${caseId} resolved with a reason`);

  await op.goto(`${registry}/operator/audit?medical_id=${medicalId}`);
  const opProofs = await op.locator(".proof").allTextContents();
  check(opProofs.length > 0 && opProofs.every((p) => p.includes("✔")), "the console checks inclusion proofs");
  await opShot("console-audit");

  const ap = auth.page;
  if (split) {
    await ap.goto(`${portal}/operator/`);
    check(ap.url().endsWith("/operator/institutions"), "the authority's console starts at its institutions");
    const persons = await auth.ctx.request.get(`${portal}/operator/person?q=${medicalId}`);
    check(persons.status() === 404, `and has no page of persons (${persons.status()})`);
  }
  await ap.goto(`${portal}/operator/institutions`);
  const row = ap.locator("tr.institution", { hasText: requesterCode });
  await Promise.all([ap.waitForNavigation({ waitUntil: "load" }), row.locator("button").click()]);
  await ap.waitForURL("**/operator/institutions");
  check((await ap.locator("tr.institution", { hasText: requesterCode }).textContent()).includes("失効"), "institution revoked in the console");
  r = await fetchRecords("treatment");
  check(r.status === 403, `a revoked institution is refused at once (${r.body.reason})`);

  await op.goto(`${registry}/operator/audit`);
  const log = await op.textContent("#audit");
  check(log.includes("operator sato") && log.includes("mismatch"), "the registry's operator actions are in its audit log under the certificate's name");
  await ap.goto(`${portal}/operator/audit`);
  const authLog = await ap.textContent("#audit");
  check(authLog.includes("operator sato") && authLog.includes("revoked"), "the revocation is in the authority's audit log under the certificate's name");
  await opShot("console-log");
  if (split) {
    await accessible(op, reg.ctx, ["/", "/operator/", "/operator/cases", "/operator/audit"], registry);
    await accessible(ap, auth.ctx, ["/operator/institutions", "/operator/audit"]);
  } else {
    await accessible(op, reg.ctx, ["/operator/", "/operator/cases", "/operator/institutions", "/operator/audit"]);
  }
  console.log("console: all checks passed");
} finally {
  await browser.close();
}
