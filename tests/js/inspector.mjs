// Drives the inspector page (GET /inspector) in Debian's Chromium through playwright-core, for
// tests/inspector.rs. Never downloads a browser: it launches `chromium` (default
// /usr/bin/chromium) headless with a fresh profile directory, removed at the end.
//
// Usage: node inspector.mjs <json options>
//   options: { url, chromium, userId, userToken, userLabel, serviceToken, screenshot }
// Prints one JSON object per line: {"step": "…"} as it goes, then {"ok": true, …measurements} or
// {"ok": false, "error": "…"} last. The events it waits for are inserted through the relay's own
// API (POST /v1/events with the user's token), so no other process has to be told when.

import { chromium } from 'playwright-core'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const opts = JSON.parse(process.argv[2] ?? '{}')
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const step = (name) => out({ step: name })

// Chromium logs a failed fetch as a console error: these answers are expected (a user token's
// 403 from /v1/status, or 404 while the relay has no status endpoint).
const EXPECTED_REFUSALS = /\/v1\/(status|presence)/

class Check extends Error {}
function check (cond, message) {
  if (!cond) throw new Check(message)
}

async function postEvent (eventType, value) {
  const response = await fetch(`${opts.url}/v1/events`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${opts.userToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ user_id: opts.userId, event_type: eventType, value }),
  })
  const body = await response.text()
  check(response.status === 201, `POST /v1/events: ${response.status} ${body}`)
  return JSON.parse(body).ids[0]
}

/** Collects console errors and uncaught exceptions of `page`, except the expected refusals. */
function watchErrors (page, errors) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return
    const where = msg.location()?.url ?? ''
    if (msg.text().startsWith('Failed to load resource') && EXPECTED_REFUSALS.test(where)) return
    errors.push(`console: ${msg.text()} (${where})`)
  })
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`))
}

/** Waits until `selector`'s text matches `pattern`; on timeout says what the text was. */
async function waitText (page, selector, pattern, timeout = 5000) {
  try {
    await page.waitForFunction(([sel, source]) => new RegExp(source).test(document.querySelector(sel)?.textContent ?? ''),
      [selector, pattern.source], { timeout })
  } catch {
    throw new Check(`${selector} never matched ${pattern} within ${timeout} ms: "${await page.textContent(selector).catch(() => '?')}" (connection: "${await page.textContent('#conn-state').catch(() => '?')}")`)
  }
}

const insertRows = (page) => page.locator('#events tbody tr[data-type="insert"]')

async function run (context) {
  const errors = []
  const result = {}
  const page = await context.newPage()
  watchErrors(page, errors)

  step('open')
  const response = await page.goto(`${opts.url}/inspector`)
  check(response.status() === 200, `GET /inspector: ${response.status()}`)
  const csp = response.headers()['content-security-policy'] ?? ''
  check(csp.includes("default-src 'self'"), `Content-Security-Policy: ${csp}`)

  step('accessible controls')
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input, select')]
      .filter((e) => !e.closest('[hidden]') && e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
      .map((e) => e.id || e.outerHTML))
  check(unlabelled.length === 0, `inputs without a label: ${unlabelled.join(', ')}`)
  check(await page.getAttribute('#conn-state', 'aria-live') === 'polite', '#conn-state is an aria-live region')

  step('pick the user preset')
  await page.waitForSelector('#preset-field:not([hidden])')
  await page.selectOption('#preset', { label: opts.userLabel })
  check((await page.inputValue('#token')) === opts.userToken, 'the preset fills the token')
  await page.check('#tables input[value="public.engagement_events"]')
  await page.click('#connect')
  await waitText(page, '#conn-state', /^Connected as user/)
  check((await page.textContent('#session-user')) === opts.userId, 'ready names the user')

  step('a row appears within 1 s with its latency')
  const started = Date.now()
  const first = await postEvent('goal_complete', { goal: 'inspector', n: 1 })
  await insertRows(page).first().waitFor({ timeout: 1000 })
  result.appear_ms = Date.now() - started
  const cells = await insertRows(page).first().locator('td').allTextContents()
  // time, type, table, event_type, user_id, latency ms, cursor, detail
  check(cells[1] === 'insert' && cells[2] === 'engagement_events', `row: ${cells}`)
  check(cells[3] === 'goal_complete' && cells[4] === opts.userId, `row: ${cells}`)
  check(cells[7].includes(first), `detail names the id: ${cells[7]}`)
  result.latency_ms = Number(cells[5])
  check(cells[5] !== '' && Number.isFinite(result.latency_ms), `latency cell: "${cells[5]}"`)
  await waitText(page, '#latency-text', /p50 [\d.]+ ms · p99 [\d.]+ ms/)
  const points = await page.getAttribute('#sparkline-line', 'points')
  check(points.trim() !== '', 'the sparkline has a point')

  step('pause: counted, not rendered')
  await page.click('#pause')
  check(await page.getAttribute('#pause', 'aria-pressed') === 'true', 'Pause is pressed')
  await postEvent('app_open', { screen: 'paused' })
  await waitText(page, '#missed', /^1 arrived while paused/, 2000)
  check(await insertRows(page).count() === 1, 'nothing rendered while paused')
  result.missed_text = await page.textContent('#missed')

  step('resume: only new frames')
  await page.click('#pause')
  await postEvent('app_open', { screen: 'resumed' })
  await page.waitForFunction(() => document.querySelectorAll('#events tbody tr[data-type="insert"]').length === 2, null, { timeout: 2000 })
  check((await insertRows(page).first().locator('td').nth(3).textContent()) === 'app_open', 'the new row is on top')

  step('disconnect, miss one, reconnect from the last cursor')
  await page.click('#disconnect')
  await waitText(page, '#close-info', /^Closed: 1000/)
  await postEvent('coach_message', { direction: 'inbound' })
  await page.click('#reconnect')
  // Replayed when the relay had decoded the row before the resume, else it comes live right
  // after `recovered`: exactly once either way.
  await waitText(page, '#recovered', /^Recovered: complete, [01] replayed/, 3000)
  result.recovered = await page.textContent('#recovered')
  await page.waitForFunction(() => document.querySelectorAll('#events tbody tr[data-type="insert"]').length === 3)
  check((await insertRows(page).first().locator('td').nth(3).textContent()) === 'coach_message', 'the missed row is on top')
  await page.waitForTimeout(300)
  check(await insertRows(page).count() === 3, 'the missed row came once')

  step('status with a user token')
  const userStatus = page.locator('#status')
  const expected = 'needs a service_role token'
  await page.waitForFunction((text) => document.querySelector('#status').textContent.includes(text), expected)
  result.user_status = (await userStatus.textContent()).trim()
  check(await page.isHidden('#presence-panel'), 'no presence panel for a user token')

  step('a second page with the service role, keyboard only')
  const admin = await context.newPage()
  watchErrors(admin, errors)
  await admin.goto(`${opts.url}/inspector`)
  await admin.focus('#token')
  await admin.keyboard.insertText(opts.serviceToken)
  await admin.keyboard.press('Enter') // submits the form: Connect
  await waitText(admin, '#conn-state', /^Connected as the service role/)
  await admin.waitForSelector('#presence-panel:not([hidden])')
  // A few events of each kind, for the service role's firehose and the screenshot.
  for (const [type, value] of [['app_open', { screen: 'home' }], ['steps_import', { steps: 4200, source: 'health_connect' }],
    ['goal_complete', { goal: 'walk', target: 8000 }], ['coach_message', { direction: 'outbound', channel: 'whatsapp' }]]) {
    await postEvent(type, value)
  }
  await admin.waitForFunction(() => document.querySelectorAll('#events tbody tr[data-type="insert"]').length === 4, null, { timeout: 3000 })
  step('status, presence and lookup')
  await admin.waitForFunction(() => Number(document.querySelector('[data-key="sessions.native"]')?.textContent) >= 2, null, { timeout: 5000 })
  result.sessions_native = Number(await admin.textContent('[data-key="sessions.native"]'))
  check((await admin.textContent('[data-key="replication.holds_slot"]')) === 'yes', 'the single node holds the slot')
  await admin.waitForFunction((id) => document.querySelector('#presence-users').textContent.includes(id), opts.userId, { timeout: 5000 })
  await admin.click(`#presence-users button:text("${opts.userId}")`)
  await admin.waitForFunction(() => document.querySelectorAll('#lookup-result tbody tr').length >= 1, null, { timeout: 5000 })
  const lookedUp = await admin.locator('#lookup-result tbody tr').first().locator('td').allTextContents()
  check(lookedUp[2] === 'native', `the user's session row: ${lookedUp}`)
  check((await admin.inputValue('#lookup-user')) === opts.userId, 'the lookup box holds the clicked user')
  result.service_latency = await admin.textContent('#latency-text')
  await admin.locator('#token').blur()
  await admin.screenshot({ path: opts.screenshot, fullPage: true })

  step('narrow screen: the page fits, the table scrolls')
  await admin.setViewportSize({ width: 390, height: 844 })
  const fit = await admin.evaluate(() => ({
    page: document.documentElement.scrollWidth - window.innerWidth,
    table: document.querySelector('#stream .table-wrap').scrollWidth - document.querySelector('#stream .table-wrap').clientWidth,
  }))
  check(fit.page <= 0, `the page overflows a phone's width by ${fit.page}px`)
  check(fit.table > 0, 'the frames table scrolls horizontally on a phone')
  await admin.screenshot({ path: opts.screenshot.replace(/\.png$/, '-phone.png'), fullPage: true })

  step('a malformed user id is explained')
  await admin.fill('#lookup-user', 'not-a-uuid')
  await admin.click('#lookup')
  await waitText(admin, '#lookup-result', /A user id is a UUID/)

  check(errors.length === 0, `console errors: ${errors.join(' | ')}`)
  return result
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-inspector-'))
let context
const watchdog = setTimeout(() => {
  out({ ok: false, error: 'timed out after 90 s' })
  process.exit(1)
}, 90_000)
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 1000 },
    // The profile is `profile` (Playwright passes it as --user-data-dir), fresh for this run.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
  })
  const result = await run(context)
  out({ ok: true, ...result })
} catch (e) {
  out({ ok: false, error: e instanceof Check ? e.message : String(e?.stack ?? e) })
  process.exitCode = 1
} finally {
  clearTimeout(watchdog)
  await context?.close().catch(() => {})
  fs.rmSync(profile, { recursive: true, force: true })
}
