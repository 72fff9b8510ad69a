// The inspector's right column: GET /v1/status every 2 s, and for a service-role token the
// online users (GET /v1/presence?online=true) and one user's sessions and presence.

import { $, api, bytes, duration, el, isServiceToken, shortCursor, timeFormat, token, when, yesNo } from './common.js'

const STATUS_MS = 2000 // status and presence refresh
const PRESENCE_LIMIT = 50
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const state = {
  timer: null,
  generation: 0, // of the refresh loop; a newer one ends the older
  blocked: null, // why refreshing stopped until the token changes (401, 403, 404)
  pages: [null], // `after` of each presence page shown so far; the last is the current one
  nextAfter: null, // the current presence page's `next_after`
}

const ms = (v) => `${Number(v).toFixed(1)} ms`

// Each group of the status JSON: [title, key, [[label, field, format?], …]].
const STATUS_VIEW = [
  ['Node', 'node', [['id', 'id'], ['role', 'role'], ['version', 'version'], ['started', 'started_at', when], ['uptime', 'uptime_s', duration]]],
  ['Replication', 'replication', [['connected', 'connected', yesNo], ['ready', 'ready', yesNo], ['holds slot', 'holds_slot', yesNo],
    ['latest cursor', 'latest_cursor', shortCursor], ['lag', 'lag_ms', ms], ['newest event age', 'newest_event_age_ms', ms],
    ['last error', 'last_error']]],
  ['Replay window', 'replay', [['events', 'events'], ['bytes', 'bytes', bytes], ['oldest', 'oldest_age_s', duration], ['window', 'window_s', duration]]],
  ['Sessions', 'sessions', [['native', 'native'], ['realtime', 'realtime'], ['total', 'total']]],
  ['Presence', 'presence', [['online users', 'online_users'], ['sessions', 'sessions']]],
]

/** The token changed: the service-role panels follow it, and the status is asked again. */
export function onTokenChanged () {
  const service = isServiceToken()
  $('#presence-panel').hidden = !service
  $('#lookup-panel').hidden = !service
  state.blocked = null
  state.pages = [null]
  refreshStatus()
}

async function refreshStatus () {
  clearTimeout(state.timer)
  state.timer = null
  const generation = ++state.generation
  const target = $('#status')
  if (!token()) {
    target.replaceChildren(el('p', "Paste a token to see the relay's status.", { class: 'hint' }))
    return
  }
  if (state.blocked) return
  try {
    const status = await api('/v1/status')
    if (generation !== state.generation) return
    target.replaceChildren(statusView(status))
    $('#status-updated').textContent = `updated ${timeFormat.format(Date.now())}`
    if (isServiceToken()) await refreshPresence()
  } catch (e) {
    if (generation !== state.generation) return
    const code = e?.status
    let text = `Status unavailable: ${e?.text ?? e?.message ?? e}`
    // The relay says why, e.g. "GET /v1/status needs a service_role token".
    if (code === 403) text = `${e.message ?? 'Status needs a service_role token'} (403 ${e.error ?? 'forbidden'}).`
    if (code === 401) text = `The token was refused (${e.text}).`
    if (code === 404) text = 'This relay has no /v1/status (404).'
    // The same token gets the same answer: ask again only when it changes (or on Refresh).
    if (code === 401 || code === 403 || code === 404) state.blocked = text
    target.replaceChildren(el('p', text, { class: 'hint' }))
  }
  if ($('#status-auto').checked && !state.blocked && token() && generation === state.generation) {
    state.timer = setTimeout(refreshStatus, STATUS_MS)
  }
}

function statusView (status) {
  const wrap = el('div', undefined, { class: 'groups' })
  for (const [title, group, fields] of STATUS_VIEW) {
    const section = el('div', undefined, { class: 'group' })
    section.append(el('h3', title))
    const dl = el('dl', undefined, { class: 'facts' })
    for (const [label, key, format] of fields) {
      const value = status?.[group]?.[key]
      const shown = value === null || value === undefined ? '—' : format ? format(value) : String(value)
      dl.append(fact(label, shown, { 'data-key': `${group}.${key}` }))
    }
    section.append(dl)
    wrap.append(section)
  }
  return wrap
}

function fact (label, value, attrs = {}) {
  const pair = el('div')
  pair.append(el('dt', label), el('dd', value ?? '—', attrs))
  return pair
}

async function refreshPresence () {
  const after = state.pages[state.pages.length - 1]
  const params = new URLSearchParams({ online: 'true', limit: String(PRESENCE_LIMIT) })
  if (after) params.set('after', after)
  const list = $('#presence-users')
  try {
    const page = await api(`/v1/presence?${params}`)
    const users = Array.isArray(page.users) ? page.users : []
    list.replaceChildren(...users.map(presenceItem))
    $('#presence-note').textContent = users.length ? `page ${state.pages.length}` : 'Nobody is online.'
    state.nextAfter = page.next_after ?? null
  } catch (e) {
    list.replaceChildren()
    $('#presence-note').textContent = `Presence unavailable: ${e?.text ?? e?.message ?? e}`
    state.nextAfter = null
  }
  $('#presence-next').disabled = !state.nextAfter
  $('#presence-first').disabled = state.pages.length === 1
}

function presenceItem (user) {
  const li = el('li')
  const button = el('button', user.user_id, { type: 'button', class: 'link mono', title: 'Look this user up' })
  button.addEventListener('click', () => {
    $('#lookup-user').value = user.user_id
    lookup()
  })
  const endpoints = user.endpoints ? ` (native ${user.endpoints.native}, realtime ${user.endpoints.realtime})` : ''
  const since = user.online_since ? ` · online since ${when(user.online_since)}` : ''
  li.append(button, el('span', ` ${user.sessions} session(s)${endpoints}${since}`, { class: 'hint' }))
  return li
}

async function lookup () {
  const id = $('#lookup-user').value.trim()
  const result = $('#lookup-result')
  if (!UUID.test(id)) {
    result.replaceChildren(el('p', 'A user id is a UUID.', { class: 'hint' }))
    return
  }
  result.replaceChildren(el('p', 'Looking up…', { class: 'hint' }))
  const [presence, sessions] = await Promise.allSettled([
    api(`/v1/presence/${encodeURIComponent(id)}`),
    api(`/v1/status/users/${encodeURIComponent(id)}`),
  ])
  const out = []
  if (presence.status === 'fulfilled') {
    const p = presence.value
    const dl = el('dl', undefined, { class: 'facts' })
    dl.append(fact('online', yesNo(p.online)), fact('sessions', p.sessions), fact('native', p.endpoints?.native),
      fact('realtime', p.endpoints?.realtime), fact('online since', p.online_since && when(p.online_since)), fact('last seen', p.last_seen && when(p.last_seen)))
    out.push(dl)
  } else {
    out.push(el('p', `Presence: ${presence.reason?.text ?? presence.reason}`, { class: 'hint' }))
  }
  if (sessions.status === 'fulfilled') {
    out.push(sessionsTable(sessions.value.sessions ?? []))
  } else {
    out.push(el('p', `Sessions: ${sessions.reason?.text ?? sessions.reason}`, { class: 'hint' }))
  }
  result.replaceChildren(...out)
}

function sessionsTable (sessions) {
  if (!sessions.length) return el('p', 'No open sessions.', { class: 'hint' })
  const wrap = el('div', undefined, { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Sessions' })
  const table = el('table')
  const head = el('tr')
  for (const h of ['session', 'node', 'endpoint', 'connected', 'subscriptions', 'delivered', 'last cursor']) {
    head.append(el('th', h, { scope: 'col' }))
  }
  const thead = el('thead')
  const tbody = el('tbody')
  thead.append(head)
  for (const s of sessions) {
    const subs = (s.subscriptions ?? []).map((sub) => [
      sub.topic,
      sub.tables ? `tables ${sub.tables.join(',')}` : 'all tables',
      sub.event_types ? `types ${sub.event_types.join(',')}` : null,
      `queue ${sub.queue_depth}`,
    ].filter(Boolean).join(' · '))
    const tr = el('tr')
    tr.append(el('td', s.session_id, { class: 'mono' }), el('td', s.node), el('td', s.endpoint), el('td', when(s.connected_at), { title: String(s.connected_at) }),
      el('td', subs.join(' | ')), el('td', s.events_delivered, { class: 'num' }),
      el('td', s.last_cursor ? shortCursor(s.last_cursor) : '—', { class: 'mono', title: s.last_cursor ?? '' }))
    tbody.append(tr)
  }
  table.append(thead, tbody)
  wrap.append(table)
  return wrap
}

/** Wires the column's buttons and forms. */
export function setupPanels () {
  $('#status-refresh').addEventListener('click', () => {
    state.blocked = null
    refreshStatus()
  })
  $('#status-auto').addEventListener('change', refreshStatus)
  $('#presence-next').addEventListener('click', () => {
    if (!state.nextAfter) return
    state.pages.push(state.nextAfter)
    refreshStatus()
  })
  $('#presence-first').addEventListener('click', () => {
    state.pages = [null]
    refreshStatus()
  })
  $('#lookup-form').addEventListener('submit', (e) => {
    e.preventDefault()
    lookup()
  })
}
