// Kibitz's service worker ({{version}}): shows a Web Push as a notification, unless the
// person is looking at that conversation right now, and opens the conversation on a click.

self.addEventListener("install", () => self.skipWaiting())
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()))

const conversationUrl = (id) => new URL(`/#/c/${id}`, self.location.origin).href

self.addEventListener("push", (event) => {
  let push = {}
  try {
    push = event.data ? event.data.json() : {}
  } catch {
    push = {}
  }
  event.waitUntil(
    (async () => {
      const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true })
      const watching = windows.some(
        (w) => w.focused && w.visibilityState === "visible" && w.url === conversationUrl(push.conversation_id),
      )
      if (watching) return
      await self.registration.showNotification(push.sender?.display_name ?? "Kibitz", {
        body: push.body ?? "New message",
        tag: `conversation-${push.conversation_id}`,
        renotify: true,
        icon: "/web/{{version}}/icon.svg",
        data: { conversation_id: push.conversation_id },
      })
    })(),
  )
})

self.addEventListener("notificationclick", (event) => {
  event.notification.close()
  const id = event.notification.data?.conversation_id
  event.waitUntil(
    (async () => {
      const url = id ? conversationUrl(id) : new URL("/", self.location.origin).href
      const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true })
      const open = windows.find((w) => new URL(w.url).origin === self.location.origin)
      if (open) {
        open.postMessage({ type: "open", conversation_id: id })
        await open.focus().catch(() => {}) // allowed only for a real click
        return
      }
      await self.clients.openWindow(url)
    })(),
  )
})
