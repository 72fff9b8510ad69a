// Helpers shared by the inspector's modules: DOM building (text only, never HTML), the pasted
// token, the relay's HTTP API, and formatting.

export const $ = (selector) => document.querySelector(selector)

/** An element `tag` with `text` (as text, never HTML) and attributes `attrs`. */
export function el (tag, text, attrs = {}) {
  const node = document.createElement(tag)
  if (text !== undefined && text !== null) node.textContent = String(text)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v)
  return node
}

export const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3, hour12: false,
})

/** The pasted token. */
export function token () {
  return $('#token').value.trim()
}

/** The JWT's claims, unverified (for display only: the relay decides), or null. */
export function claimsOf (jwt) {
  const part = jwt.split('.')[1]
  if (!part) return null
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=')
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))
    const claims = JSON.parse(new TextDecoder().decode(bytes))
    return claims && typeof claims === 'object' ? claims : null
  } catch {
    return null
  }
}

export function isServiceToken () {
  return claimsOf(token())?.role === 'service_role'
}

export function auth () {
  return { Authorization: `Bearer ${token()}` }
}

/**
 * `GET path` with the token: its JSON body; else throws `{status, error, message, text}` (the
 * relay's `{"error","message"}`, `text` both in one line).
 */
export async function api (path) {
  const response = await fetch(path, { headers: auth(), cache: 'no-store', signal: AbortSignal.timeout(5000) })
  if (!response.ok) throw await refusal(response)
  return response.json()
}

async function refusal (response) {
  let body = {}
  try {
    body = await response.json()
  } catch {}
  const error = typeof body?.error === 'string' ? body.error : null
  const message = typeof body?.message === 'string' ? body.message : null
  const text = error ? `${response.status} ${error}: ${message}` : `HTTP ${response.status}`
  return { status: response.status, error, message, text }
}

/** A refusal as `403 forbidden: <message>`. */
export async function errorText (response) {
  return (await refusal(response)).text
}

/** `0000000001a2b3c8000000050a1b2c3d` → `0/1A2B3C8#5`: the commit LSN as PostgreSQL prints it, and the row. */
export function shortCursor (cursor) {
  if (typeof cursor !== 'string' || !/^[0-9a-f]{32}$/.test(cursor)) return String(cursor)
  const hi = parseInt(cursor.slice(0, 8), 16).toString(16).toUpperCase()
  const lo = parseInt(cursor.slice(8, 16), 16).toString(16).toUpperCase()
  return `${hi}/${lo}#${parseInt(cursor.slice(16, 24), 16)}`
}

/** `2026-11-20T12:00:00.123456Z` as milliseconds since the epoch, microseconds kept (any number of fraction digits). */
export function parseTime (ts) {
  const m = /^(.+T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})$/.exec(ts)
  if (!m) return Date.parse(ts)
  const micros = Number((m[2] ?? '').padEnd(6, '0').slice(0, 6))
  return Date.parse(m[1] + m[3]) + micros / 1000
}

const dayFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' })

/** An RFC 3339 time as local `HH:MM:SS.mmm`, with the day when it is not today. */
export function when (ts) {
  const t = parseTime(String(ts))
  if (!Number.isFinite(t)) return String(ts)
  const sameDay = new Date(t).toDateString() === new Date().toDateString()
  return sameDay ? timeFormat.format(t) : `${dayFormat.format(t)} ${timeFormat.format(t)}`
}

export function duration (seconds) {
  const s = Math.round(Number(seconds))
  if (!Number.isFinite(s)) return '—'
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.round(s / 60)} min`
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`
  return `${(s / 86400).toFixed(1)} d`
}

export function bytes (n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = Number(n)
  let i = 0
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${i ? v.toFixed(1) : v} ${units[i]}`
}

export const yesNo = (v) => (v === true ? 'yes' : v === false ? 'no' : '—')
