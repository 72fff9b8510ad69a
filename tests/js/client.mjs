// Drives the real Supabase clients against engagement-relay for tests/supabase_compat.rs.
//
// Usage: node client.mjs <realtime|supabase-js> <json options>
//   options: { url, apikey, token, vsn, filter, event, heartbeatIntervalMs, channel }
// Prints one JSON object per line: {"status": "SUBSCRIBED"|"CHANNEL_ERROR"|"CLOSED"|…, "error": "…"}
// and {"change": <payload given to the callback>}. Reads commands as JSON lines on stdin:
// {"cmd": "setAuth", "token": "…"}, {"cmd": "quit"}.
import { RealtimeClient } from '@supabase/realtime-js'
import { createClient } from '@supabase/supabase-js'
import WebSocket from 'ws'
import readline from 'node:readline'

const [mode, raw] = process.argv.slice(2)
const opts = JSON.parse(raw ?? '{}')
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

let realtime
let channel
if (mode === 'supabase-js') {
  const supabase = createClient(opts.url, opts.apikey, {
    realtime: { transport: WebSocket, params: { log_level: 'info' } },
    auth: { persistSession: false, autoRefreshToken: false },
  })
  realtime = supabase.realtime
  channel = supabase.channel(opts.channel ?? 'dashboard')
} else {
  realtime = new RealtimeClient(opts.url, {
    params: { apikey: opts.apikey },
    transport: WebSocket,
    vsn: opts.vsn ?? '2.0.0',
    heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 25000,
  })
  if (opts.token) realtime.setAuth(opts.token)
  channel = realtime.channel(opts.channel ?? 'dashboard')
}

const binding = { event: opts.event ?? 'INSERT', schema: 'public', table: 'engagement_events' }
if (opts.filter) binding.filter = opts.filter
channel
  .on('postgres_changes', binding, (payload) => out({ change: payload }))
  .on('system', {}, (payload) => out({ system: payload }))
  .subscribe((status, err) => out({ status, error: err ? err.message : null }))

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const msg = JSON.parse(line)
  if (msg.cmd === 'setAuth') {
    await realtime.setAuth(msg.token)
    out({ ack: 'setAuth' })
  } else if (msg.cmd === 'quit') {
    await realtime.removeAllChannels()
    realtime.disconnect()
    process.exit(0)
  }
})
