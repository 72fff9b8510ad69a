// engagement-relay inspector: watches the native stream (/v1/events, docs/PROTOCOL.md) of a
// pasted token and its commit → browser latency; panels.js shows GET /v1/status, presence and
// one user's sessions. Plain JavaScript modules, no framework, no network but this origin.
// Everything received is written as text (common.js `el`), never parsed as HTML.

import { $, auth, claimsOf, duration, el, errorText, parseTime, shortCursor, timeFormat, token } from './common.js'
import { onTokenChanged, setupPanels } from './panels.js'

const MAX_ROWS = 500 // rows kept in the frames table
const SPARK_N = 200 // latencies in the sparkline and its percentiles

// What each close code means (docs/PROTOCOL.md, "Close codes"); 1005/1006 are the browser's own.
const CLOSE_CODES = {
  1000: 'normal closure',
  1001: 'server shutting down: reconnect from the last cursor',
  1005: 'closed without a status code',
  1006: 'connection lost without a close frame (network, a refused upgrade, or the relay stopped)',
  1007: 'a frame that is not UTF-8',
  1008: 'policy: a malformed frame or cursor',
  1009: 'message too big',
  1011: 'server error',
  1012: 'the stream restarted: reconnect from the last cursor; "recovered" says whether anything is missing',
  4001: 'token expired or invalid: paste a fresh token',
  4003: 'token identity changed',
  4004: 'disconnected by an operator',
  4008: 'slow consumer, the queue filled up: reconnect from the last cursor to catch up',
}

const config = readConfig()
// `schema.table` → its owner column (`[[tables]]` `owner_column`), shown as the frame's user.
const owners = new Map(config.tables.map((t) => [`${t.schema}.${t.table}`, t.owner]))
const state = {
  ws: null,
  opened: false, // the current socket reached `open`
  lastCursor: null,
  resumingFrom: null, // the `since` of the current socket
  paused: false,
  missed: 0, // frames that arrived while paused
  received: 0,
  pending: [], // frames waiting for the next animation frame
  renderQueued: false,
  latencies: [], // the last SPARK_N commit → browser latencies, in ms
}

function readConfig () {
  try {
    const parsed = JSON.parse($('#inspector-config').textContent)
    return { tables: [], presets: false, ...parsed }
  } catch {
    return { tables: [], presets: false }
  }
}

function setConn (text) {
  $('#conn-state').textContent = text
}

function banner (node, text, kind) {
  node.textContent = text
  node.className = `banner ${kind}`
  node.hidden = !text
}

// ---------------------------------------------------------------- token

function describeToken () {
  const jwt = token()
  const info = $('#token-info')
  if (!jwt) {
    info.textContent = 'Pasted tokens stay in this browser tab; nothing is stored.'
    return
  }
  const claims = claimsOf(jwt)
  if (!claims) {
    info.textContent = 'Not a readable JWT (the relay decides).'
    return
  }
  const parts = [`role ${claims.role ?? '?'}`]
  if (claims.sub) parts.push(`sub ${claims.sub}`)
  if (typeof claims.exp === 'number') {
    const left = Math.round(claims.exp - Date.now() / 1000)
    parts.push(left > 0 ? `expires in ${duration(left)}` : `expired ${duration(-left)} ago`)
  }
  info.textContent = parts.join(' · ')
}

function tokenChanged () {
  describeToken()
  onTokenChanged()
}

async function loadPresets () {
  if (!config.presets) return
  try {
    const response = await fetch('/inspector/presets.json', { cache: 'no-store' })
    if (!response.ok) return
    const presets = await response.json()
    const select = $('#preset')
    for (const [i, p] of presets.entries()) select.append(el('option', p.label, { value: String(i) }))
    select.addEventListener('change', () => {
      const preset = presets[Number(select.value)]
      if (!select.value || !preset) return
      $('#token').value = preset.token
      tokenChanged()
    })
    $('#preset-field').hidden = false
  } catch {
    // No picker; pasting still works.
  }
}

// ---------------------------------------------------------------- stream

function streamUrl (since) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  const params = new URLSearchParams({ access_token: token() })
  const tables = [...document.querySelectorAll('#tables input:checked')].map((c) => c.value)
  if (tables.length) params.set('table', tables.join(','))
  const types = $('#event-types').value.split(',').map((s) => s.trim()).filter(Boolean)
  if (types.length) params.set('event_type', types.join(','))
  if (since) params.set('since', since)
  return `${scheme}//${location.host}/v1/events?${params}`
}

function connect (since) {
  if (!token()) {
    setConn('Paste a token first.')
    $('#token').focus()
    return
  }
  closeSocket(1000, 'reconnecting')
  banner($('#close-info'), '', '')
  banner($('#recovered'), since ? `Resuming after cursor ${since}…` : '', 'info')
  state.resumingFrom = since ?? null
  state.opened = false
  let ws
  try {
    ws = new WebSocket(streamUrl(since))
  } catch (e) {
    setConn(`Cannot connect: ${e.message}`)
    return
  }
  state.ws = ws
  setConn(since ? 'Connecting, resuming from the last cursor…' : 'Connecting…')
  ws.addEventListener('open', () => {
    state.opened = true
    setConn('Connected; waiting for ready.')
  })
  ws.addEventListener('message', (event) => onFrame(event.data))
  ws.addEventListener('close', (event) => onClose(ws, event))
  updateButtons()
}

function closeSocket (code, reason) {
  const ws = state.ws
  if (!ws) return
  state.ws = null
  ws.close(code, reason)
  updateButtons()
}

function updateButtons () {
  const open = state.ws !== null
  $('#disconnect').disabled = !open
  $('#reconnect').disabled = !state.lastCursor
  $('#connect').textContent = open ? 'Connect again' : 'Connect'
}

function onClose (ws, event) {
  if (state.ws !== ws) return // replaced on purpose
  state.ws = null
  const meaning = CLOSE_CODES[event.code] ?? 'unknown close code'
  const reason = event.reason ? ` "${event.reason}"` : ''
  const text = `Closed: ${event.code}${reason}, ${meaning}.`
  setConn(text)
  banner($('#close-info'), text, event.code === 1000 ? 'info' : 'warn')
  updateButtons()
  if (!state.opened) diagnose()
}

/** The socket closed before it opened: the browser hides the HTTP refusal, so ask the HTTP API. */
async function diagnose () {
  try {
    const response = await fetch('/v1/events?limit=1', { headers: auth(), cache: 'no-store' })
    const why = response.ok
      ? 'the token is valid, so the upgrade was refused for another reason: too many sessions (429), the relay not ready (503) or a bad parameter (400)'
      : await errorText(response)
    banner($('#close-info'), `Could not connect: ${why}.`, 'warn')
  } catch {
    banner($('#close-info'), 'Could not connect: the relay does not answer.', 'warn')
  }
}

function onFrame (data) {
  const at = Date.now()
  state.received += 1
  let frame = null
  try {
    frame = JSON.parse(data)
  } catch {}
  if (!frame || typeof frame !== 'object' || Array.isArray(frame)) frame = { type: 'unparsable' }
  if (typeof frame.cursor === 'string') {
    state.lastCursor = frame.cursor
    $('#last-cursor').textContent = frame.cursor
  }
  const latency = typeof frame.commit_timestamp === 'string' ? at - parseTime(frame.commit_timestamp) : null
  if (frame.type === 'ready') onReady(frame)
  if (frame.type === 'recovered') onRecovered(frame)
  if (frame.type === 'error') setConn(`Error from the relay: ${frame.code}: ${frame.message}`)
  if (state.paused) {
    state.missed += 1
  } else {
    if (Number.isFinite(latency)) {
      state.latencies.push(latency)
      if (state.latencies.length > SPARK_N) state.latencies.shift()
    }
    state.pending.push({ frame, data, at, latency })
    if (state.pending.length > MAX_ROWS) state.pending.shift()
  }
  scheduleRender()
}

function onReady (frame) {
  $('#session-id').textContent = frame.session_id ?? '—'
  $('#session-role').textContent = frame.role ?? '—'
  $('#session-user').textContent = frame.user_id ?? 'all users (service role)'
  const who = frame.user_id ? `user ${frame.user_id}` : 'the service role'
  setConn(`Connected as ${who}; ${state.resumingFrom ? 'replaying, then live' : 'live'}.`)
  updateButtons()
}

function onRecovered (frame) {
  const text = frame.complete
    ? `Recovered: complete, ${frame.replayed} replayed after ${state.resumingFrom}. Live from ${frame.cursor}.`
    : `Recovered: INCOMPLETE (${frame.replayed} replayed): the relay no longer holds everything after ${state.resumingFrom}; reload history. Live from ${frame.cursor}.`
  banner($('#recovered'), text, frame.complete ? 'ok' : 'warn')
  setConn(`Resumed (${frame.complete ? 'complete' : 'incomplete'}); live.`)
}

// ---------------------------------------------------------------- rendering

function scheduleRender () {
  if (state.renderQueued) return
  state.renderQueued = true
  requestAnimationFrame(render)
}

function render () {
  state.renderQueued = false
  const batch = state.pending
  state.pending = []
  if (batch.length) {
    const tbody = $('#events tbody')
    const fragment = document.createDocumentFragment()
    for (let i = batch.length - 1; i >= 0; i--) fragment.append(row(batch[i]))
    tbody.prepend(fragment)
    while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove()
    drawLatency()
  }
  const shown = $('#events tbody').rows.length
  $('#frame-count').textContent = `${state.received} received · ${shown} shown`
  const missed = $('#missed')
  missed.hidden = state.missed === 0
  missed.textContent = `${state.missed} arrived while paused (not shown)`
}

function row ({ frame, data, at, latency }) {
  const found = frame.record ?? frame.old_record
  const record = found && typeof found === 'object' ? found : {}
  const owner = owners.get(`${frame.schema}.${frame.table}`) ?? 'user_id'
  const tr = el('tr', undefined, { 'data-type': String(frame.type ?? '') })
  tr.append(
    el('td', timeFormat.format(at)),
    el('td', frame.type ?? '?', { class: `type type-${frame.type}` }),
    el('td', frame.table ?? ''),
    el('td', record.event_type ?? ''),
    el('td', record[owner] ?? frame.user_id ?? '', { class: 'mono' }),
    el('td', latency === null || !Number.isFinite(latency) ? '' : latency.toFixed(1), { class: 'num latency' }),
    el('td', frame.cursor ? shortCursor(frame.cursor) : '', { class: 'mono', title: frame.cursor ?? '' }),
    detail(frame, data),
  )
  return tr
}

function detail (frame, data) {
  const td = el('td')
  const id = (frame.record ?? frame.old_record)?.id
  const text = {
    ready: `session ${frame.session_id ?? '?'} · ${frame.role ?? '?'}`,
    recovered: `complete ${frame.complete} · replayed ${frame.replayed}`,
    error: `${frame.code}: ${frame.message}`,
  }[frame.type] ?? (id ? `id ${id}` : '')
  if (text) td.append(el('span', text), ' ')
  // The JSON is laid out only when opened: 500 rows of <pre> would cost more than they show.
  const details = el('details')
  details.append(el('summary', 'JSON'))
  details.addEventListener('toggle', () => {
    if (details.open && details.childElementCount === 1) details.append(el('pre', pretty(data)))
  })
  td.append(details)
  return td
}

function pretty (data) {
  try {
    return JSON.stringify(JSON.parse(data), null, 2)
  } catch {
    return String(data)
  }
}

function percentile (sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
}

function drawLatency () {
  const values = state.latencies
  if (!values.length) return
  const sorted = [...values].sort((a, b) => a - b)
  const p50 = percentile(sorted, 0.5)
  const p99 = percentile(sorted, 0.99)
  const top = Math.max(sorted[sorted.length - 1], 1)
  const low = Math.min(sorted[0], 0)
  const step = 200 / Math.max(values.length - 1, 1)
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(38 - ((v - low) / (top - low)) * 36).toFixed(1)}`)
  $('#sparkline-line').setAttribute('points', points.join(' '))
  $('#latency-text').textContent =
    `Commit → browser latency of the last ${values.length} events: p50 ${p50.toFixed(1)} ms · p99 ${p99.toFixed(1)} ms · max ${top.toFixed(1)} ms`
}

function togglePause () {
  state.paused = !state.paused
  const button = $('#pause')
  button.setAttribute('aria-pressed', String(state.paused))
  button.textContent = state.paused ? 'Resume' : 'Pause'
  if (state.paused) state.missed = 0
  scheduleRender()
}

function clearFrames () {
  $('#events tbody').replaceChildren()
  state.pending = []
  state.latencies = []
  state.missed = 0
  $('#sparkline-line').setAttribute('points', '')
  $('#latency-text').textContent = 'Commit → browser latency: no events yet.'
  scheduleRender()
}

// ---------------------------------------------------------------- wiring

function setup () {
  const fieldset = $('#tables')
  for (const t of config.tables) {
    const name = `${t.schema}.${t.table}`
    const label = el('label', undefined, { class: 'check' })
    const box = el('input', undefined, { type: 'checkbox', value: name, name: 'table' })
    label.append(box, ` ${t.table}`)
    label.title = `${name}: ${(t.operations ?? []).join(', ')}`
    fieldset.append(label)
  }
  $('#connect-form').addEventListener('submit', (e) => {
    e.preventDefault()
    connect(null)
  })
  $('#disconnect').addEventListener('click', () => {
    const ws = state.ws
    if (!ws) return
    ws.close(1000, 'closed in the inspector')
  })
  $('#reconnect').addEventListener('click', () => connect(state.lastCursor))
  $('#pause').addEventListener('click', togglePause)
  $('#clear').addEventListener('click', clearFrames)
  $('#show-token').addEventListener('change', (e) => { $('#token').type = e.target.checked ? 'text' : 'password' })
  let typing = null
  $('#token').addEventListener('input', () => {
    clearTimeout(typing)
    typing = setTimeout(tokenChanged, 300)
  })
  setupPanels()
  loadPresets()
  updateButtons()
}

setup()
