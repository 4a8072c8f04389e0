// Web Push for this browser: the service worker, the permission (asked only on a click),
// and the subscription, given to the server for this device and kept in step with it.

const SYNC_EVERY_MS = 30_000

function keyBytes(base64url) {
  const text = atob(base64url.replace(/-/g, "+").replace(/_/g, "/"))
  return Uint8Array.from(text, (c) => c.charCodeAt(0))
}

export default class Notifications extends EventTarget {
  #api
  #registration = null
  #synced = 0

  constructor(api) {
    super()
    this.#api = api
  }

  get supported() {
    return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window
  }

  // "default" (not asked yet), "granted", "denied", or "unsupported".
  get permission() { return this.supported ? Notification.permission : "unsupported" }

  async start() {
    if (!this.supported) return
    this.#registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" })
    if (this.permission === "granted") await this.sync()
  }

  // On the person's click: ask, then subscribe.
  async enable() {
    const answer = await Notification.requestPermission()
    this.dispatchEvent(new CustomEvent("change"))
    if (answer === "granted") await this.sync(true)
    return answer
  }

  // Give the server this browser's subscription (made if missing), at most every 30 s.
  async sync(now = false) {
    if (!this.#registration || this.permission !== "granted") return
    if (!now && Date.now() - this.#synced < SYNC_EVERY_MS) return
    this.#synced = Date.now()
    const { public_key: key } = await this.#api.get("/push/vapid-key")
    const manager = this.#registration.pushManager
    let subscription = await manager.getSubscription()
    if (subscription && !sameKey(subscription, key)) {
      await subscription.unsubscribe() // the server's key changed: subscribe anew
      subscription = null
    }
    subscription ??= await manager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) })
    await this.#api.post("/push/subscriptions", subscription.toJSON())
  }

  // Logging out: the server drops this device's subscriptions; drop the browser's too.
  async forget() {
    const subscription = await this.#registration?.pushManager.getSubscription()
    await subscription?.unsubscribe()
  }
}

function sameKey(subscription, key) {
  const current = subscription.options?.applicationServerKey
  if (!current) return true
  const bytes = new Uint8Array(current)
  const wanted = keyBytes(key)
  return bytes.length === wanted.length && bytes.every((b, i) => b === wanted[i])
}
