// The live half of the protocol: one WebSocket (or, where WebSockets are blocked, long
// polling), resumed from the last cursor after every drop, so no event is missed or seen
// twice. Events come out as "event" (the protocol's Event) and "typing"; the state as
// "state": connecting | live | polling | offline. "expired" asks the app to reload
// everything (the cursor is older than the server keeps); "unauthorized" that the token
// is gone. Answers to sends come out as "sent" and "send-error".

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const POLL_SECONDS = 25
const BACK_TO_WEBSOCKET_MS = 60_000
const MAX_PAUSE_MS = 15_000

export default class Connection extends EventTarget {
  #api
  #token
  #cursor = null
  #socket = null
  #state = "connecting"
  #failures = 0 // connection attempts in a row that never got to "ready"
  #wasReady = false
  #polling = false
  #stopped = false
  #opening = false // asking discovery where to connect
  #timer = null

  constructor(api, token) {
    super()
    this.#api = api
    this.#token = token
    window.addEventListener("online", () => this.#retryNow())
  }

  // Start from `cursor` (taken before the app loaded what it shows), or reconnect with it.
  start(cursor) {
    this.#cursor = cursor
    this.#stopped = false
    this.#failures = 0
    this.#openSocket()
  }

  stop() {
    this.#stopped = true
    clearTimeout(this.#timer)
    this.#socket?.close(1000)
    this.#socket = null
  }

  // Send a frame over the WebSocket if it is live; false if it cannot go that way now.
  send(frame) {
    if (this.#state !== "live" || this.#socket?.readyState !== WebSocket.OPEN) return false
    this.#socket.send(JSON.stringify(frame))
    return true
  }

  #setState(state) {
    if (state === this.#state) return
    this.#state = state
    this.dispatchEvent(new CustomEvent("state", { detail: state }))
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }))
  }

  // -- WebSocket --------------------------------------------------------------------------

  async #openSocket() {
    if (this.#stopped || this.#opening) return
    if (!this.#polling) this.#setState("connecting")
    this.#opening = true
    const url = await this.#socketUrl().finally(() => { this.#opening = false })
    if (this.#stopped || this.#socket) return
    const socket = new WebSocket(url)
    this.#socket = socket
    let ready = false
    socket.onopen = () => {
      const hello = { type: "hello", token: this.#token }
      if (this.#cursor) hello.since = this.#cursor
      socket.send(JSON.stringify(hello))
    }
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data)
      if (frame.type === "ready") {
        ready = true
        this.#failures = 0
        this.#wasReady = true
        this.#polling = false
        this.#cursor = frame.cursor
        this.#setState("live")
        this.#emit("ready", frame)
      } else if (frame.type === "event") {
        this.#onEvent(frame.event, frame.cursor)
      } else if (frame.type === "sent") {
        this.#emit("sent", frame)
      } else if (frame.type === "error") {
        this.#emit("send-error", frame)
      }
    }
    socket.onclose = (closed) => {
      if (this.#socket === socket) this.#socket = null
      if (this.#stopped || (this.#polling && !ready)) return
      this.#closed(closed.code, ready)
    }
  }

  // Where the WebSocket goes: to the instance discovery recommends (the least loaded),
  // when there are several and it has a public URL of its own on this page's scheme,
  // unless the last try failed; else to this page's host.
  async #socketUrl() {
    let target = location
    if (this.#failures === 0) {
      try {
        const { servers, recommended } = await this.#api.get("/discovery", { patience: 0 })
        const url = new URL(recommended)
        if (servers.length > 1 && url.protocol === location.protocol) target = url
      } catch {
        // discovery did not answer: this page's host, then
      }
    }
    return `${target.protocol === "https:" ? "wss" : "ws"}://${target.host}/api/v1/ws`
  }

  #closed(code, wasReady) {
    if (code === 4401) return this.#unauthorized()
    if (code === 4410 || code === 4400) return this.#expired()
    if (!wasReady) this.#failures++
    // Never ready twice in a row: something between here and the server blocks WebSockets.
    if (code === 4429 || (!this.#wasReady && this.#failures >= 2)) return this.#poll()
    this.#setState(navigator.onLine === false ? "offline" : "connecting")
    this.#later(() => this.#openSocket(), this.#pause())
  }

  #pause() {
    const base = Math.min(MAX_PAUSE_MS, 500 * 2 ** Math.min(this.#failures, 5))
    return base / 2 + Math.random() * base / 2
  }

  #later(work, ms) {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(work, ms)
  }

  #retryNow() {
    if (this.#stopped || this.#socket || this.#polling) return
    this.#failures = 0
    this.#later(() => this.#openSocket(), 0)
  }

  // -- long polling ---------------------------------------------------------------------

  async #poll() {
    if (this.#polling) return
    this.#polling = true
    this.#setState("polling")
    let tryWebSocketAt = Date.now() + BACK_TO_WEBSOCKET_MS
    let failures = 0
    while (this.#polling && !this.#stopped) {
      if (Date.now() > tryWebSocketAt) {
        tryWebSocketAt = Date.now() + BACK_TO_WEBSOCKET_MS
        this.#openSocket() // if it gets to "ready", polling stops
      }
      try {
        const since = this.#cursor ? `&since=${encodeURIComponent(this.#cursor)}` : ""
        const page = await this.#api.get(`/sync?timeout=${this.#cursor ? POLL_SECONDS : 0}${since}`)
        if (!this.#polling) break
        for (const event of page.events) this.#onEvent(event, null)
        this.#cursor = page.cursor
        failures = 0
        this.#setState("polling")
      } catch (error) {
        if (error.status === 401) return this.#unauthorized()
        if (error.status === 410) return this.#expired()
        failures++
        this.#setState(navigator.onLine === false ? "offline" : "connecting")
        await sleep(Math.min(MAX_PAUSE_MS, 1000 * 2 ** failures))
      }
    }
  }

  // -- what comes in ----------------------------------------------------------------------

  #onEvent(event, cursor) {
    if (cursor) this.#cursor = cursor
    this.#emit(event.type === "typing" ? "typing" : "event", event)
  }

  #unauthorized() {
    this.stop()
    this.#setState("offline")
    this.#emit("unauthorized")
  }

  #expired() {
    this.#cursor = null
    this.#polling = false
    this.#emit("expired")
  }
}
