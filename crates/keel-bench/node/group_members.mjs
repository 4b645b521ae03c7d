// keel-bench's group members on a second client, @platformatic/kafka (a
// Kafka client in plain JavaScript), whose members rejoin as soon as they
// are told to, where librdkafka's wait up to a second. Usage:
//   node group_members.mjs BOOTSTRAP TOPIC GROUP PROTOCOL MEMBERS HEARTBEAT_MS
// Prints one JSON line: milliseconds from the moment every member
// subscribes until each has received a record, and the partitions each
// ended up with.

// Node 20 lacks Promise.withResolvers, which the client uses.
Promise.withResolvers ??= function () {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}
const { Consumer } = await import('@platformatic/kafka')

const [bootstrap, topic, group, protocol, count, heartbeatMs] = process.argv.slice(2)
const members = Array.from({ length: Number(count) }, (_, i) => new Consumer({
  groupId: group,
  clientId: `keel-bench-${i}`,
  bootstrapBrokers: [bootstrap],
  protocols: [{ name: protocol, version: 1 }],
  sessionTimeout: 10000,
  heartbeatInterval: Number(heartbeatMs)
}))
// A member's errors fail the run until the figure is in; after it, while the
// members close, a join retry can still meet its own closed connection.
let closing = false
for (const m of members) {
  m.on('error', e => {
    if (!closing) {
      console.log(JSON.stringify({ error: `member: ${e.message}` }))
      process.exit(1)
    }
  })
}
// Connected before the clock starts, as keel-bench's librdkafka members are.
await Promise.all(members.map(m => m.metadata({ topics: [topic] })))

const consuming = members.map(() => false)
const { promise: allConsuming, resolve } = Promise.withResolvers()
const giveUp = setTimeout(() => {
  console.log(JSON.stringify({ error: `members consuming after 60 s: ${consuming}` }))
  process.exit(1)
}, 60000)
const start = performance.now()
const streams = await Promise.all(members.map(async (m, i) => {
  const stream = await m.consume({ topics: [topic], mode: 'earliest', autocommit: false })
  stream.on('data', () => {
    consuming[i] = true
    if (consuming.every(Boolean)) resolve()
  })
  return stream
}))
await allConsuming
const ms = performance.now() - start
clearTimeout(giveUp)
const assigned = members.map(m => (m.assignments ?? []).reduce((n, a) => n + a.partitions.length, 0))
console.log(JSON.stringify({ all_consuming_ms: Math.round(ms * 10) / 10, assigned }))
closing = true
await Promise.all(streams.map(s => s.close()))
await Promise.all(members.map(m => m.close()))
