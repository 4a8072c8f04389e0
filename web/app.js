// Kibitz's web client: the page's wiring. Models (models/) hold the behaviour, controllers
// (controllers/) draw one part of the page each; this file starts them and carries
// events between them. Routes are the URL's hash: #/ (the list) and #/c/<id>.

import { h, replace } from "./dom.js"
import Api from "./models/api.js"
import Connection from "./models/connection.js"
import Conversations from "./models/conversations.js"
import { title } from "./models/format.js"
import History from "./models/history.js"
import Notifications from "./models/notifications.js"
import Outbox from "./models/outbox.js"
import Session from "./models/session.js"
import Typing from "./models/typing.js"
import Users from "./models/users.js"
import showAuth from "./controllers/auth.js"
import Chat from "./controllers/chat.js"
import { invitations, members, newConversation } from "./controllers/dialogs.js"
import Sidebar from "./controllers/sidebar.js"

const RETRY_SEND_MS = 3000

class App {
  root = document.getElementById("app")
  api = new Api({ onUnauthorized: () => this.signedOut("You were signed out. Log in again.") })
  session = null
  notifications = new Notifications(this.api)
  #histories = new Map()
  #marked = new Map() // conversation id: the newest message id marked read from here
  #connection = null
  #sidebar = null
  #chat = null
  #shell = null

  start() {
    const session = Session.load()
    const invitation = takeInvitation()
    if (session) this.enter(session)
    else this.#auth("", invitation)
    window.addEventListener("hashchange", () => this.route())
    navigator.serviceWorker?.addEventListener("message", (e) => {
      if (e.data?.type === "open" && e.data.conversation_id) location.hash = `#/c/${e.data.conversation_id}`
    })
  }

  #auth(notice = "", invitation = "") {
    document.title = "Kibitz"
    showAuth(this.root, this.api, { onSession: (session) => this.enter(session), notice, invitation })
  }

  get openId() { return this.#chat?.openId ?? null }

  async enter(session) {
    this.session = session
    this.api.token = session.token
    this.users = new Users(this.api)
    this.users.remember(session.user)
    this.outbox = new Outbox(session.user.id)
    this.conversations = new Conversations()
    this.typing = new Typing()
    this.#sidebar = new Sidebar(this)
    this.#chat = new Chat(this)
    this.#shell = h("div", { class: "shell" }, this.#sidebar.element, this.#chat.element)
    replace(this.root, this.#shell, h("div", { id: "announcer", class: "visually-hidden", "aria-live": "polite" }))
    this.conversations.addEventListener("change", (e) => this.#changed(e.detail))
    this.outbox.addEventListener("change", (e) => e.detail === this.openId && this.#chat.render())
    this.typing.addEventListener("change", (e) => e.detail === this.openId && this.#chat.showTyping())
    try {
      await this.#load()
    } catch (error) {
      if (error.status === 401) return
      this.#sidebar.state("offline")
    }
    this.notifications.start().catch(() => {})
    const { user } = await this.api.get("/me").catch(() => ({ user: {} }))
    if (user.admin) this.#sidebar.offerInvitations()
  }

  // The cursor of now first, then what to show: the live events from that cursor on
  // fill whatever happens meanwhile, and nothing shows twice.
  async #load() {
    const { cursor } = await this.api.get("/sync")
    const { conversations } = await this.api.get("/conversations")
    await this.users.all([...new Set(conversations.flatMap((c) => c.members))])
    this.conversations.load(conversations)
    for (const history of this.#histories.values()) history.loaded = false
    this.#connect(cursor)
    this.route()
  }

  #connect(cursor) {
    this.#connection?.stop()
    const connection = new Connection(this.api, this.session.token)
    this.#connection = connection
    connection.addEventListener("state", (e) => this.#sidebar.state(e.detail))
    connection.addEventListener("ready", () => this.#flush())
    connection.addEventListener("event", (e) => this.#event(e.detail))
    connection.addEventListener("typing", (e) => e.detail.user_id !== this.session.user.id && this.typing.saw(e.detail.conversation_id, e.detail.user_id))
    connection.addEventListener("sent", (e) => this.#message(e.detail.message))
    connection.addEventListener("send-error", (e) => this.#sendFailed(e.detail))
    connection.addEventListener("expired", () => this.#load().catch(() => {}))
    connection.addEventListener("unauthorized", () => this.signedOut("You were signed out. Log in again."))
    connection.start(cursor)
  }

  route() {
    if (!this.session) return
    const id = /^#\/c\/(\d+)$/.exec(location.hash)?.[1]
    const conversation = id ? this.conversations.get(id) : null
    this.#shell.classList.toggle("in-chat", Boolean(conversation))
    if (conversation) {
      this.#chat.open(conversation, this.historyOf(id)).catch(() => {})
    } else {
      this.#chat.close()
      document.title = "Kibitz"
    }
    this.#sidebar.render()
  }

  historyOf(id) {
    if (!this.#histories.has(id)) this.#histories.set(id, new History(this.api, id))
    return this.#histories.get(id)
  }

  #changed(id) {
    this.#sidebar.render()
    if (id && id === this.openId) this.#chat.header()
    const unread = this.conversations.unread()
    document.title = `${unread ? `(${unread}) ` : ""}${this.openId ? title(this.conversations.get(this.openId), this.session.user, this.users) : "Kibitz"}`
  }

  // -- events from the server -----------------------------------------------------------------

  async #event(event) {
    if (event.type === "message") return this.#message(event.message)
    if (event.type === "conversation") return this.#conversation(event.conversation)
    if (event.type === "read") {
      const conversation = this.conversations.get(event.conversation_id)
      if (conversation?.last_message && BigInt(event.message_id) >= BigInt(conversation.last_message.id)) {
        this.conversations.read(event.conversation_id)
      } else if (conversation) {
        this.#refresh(event.conversation_id)
      }
    }
  }

  async #message(message) {
    const mine = message.sender_id === this.session.user.id
    if (mine) this.outbox.done(message.client_msg_id)
    else this.typing.stopped(message.conversation_id, message.sender_id)
    await this.users.get(message.sender_id).catch(() => null)
    if (!this.conversations.get(message.conversation_id)) await this.#refresh(message.conversation_id)
    const history = this.#histories.get(message.conversation_id)
    const fresh = history?.loaded ? history.add([message]) : 1
    const open = message.conversation_id === this.openId
    const seen = open && document.visibilityState === "visible" && document.hasFocus()
    if (fresh) this.conversations.message(message, { mine, seen })
    if (open && fresh) this.#chat.added(message)
  }

  async #conversation(conversation) {
    const member = conversation.members.includes(this.session.user.id)
    await this.users.all(conversation.members)
    this.conversations.put(conversation, member)
    if (!member && conversation.id === this.openId) location.hash = "#/"
  }

  async #refresh(id) {
    try {
      const { conversation } = await this.api.get(`/conversations/${id}`)
      await this.#conversation(conversation)
    } catch (error) {
      if (error.status === 404) this.conversations.put({ id }, false)
    }
  }

  // -- sending ---------------------------------------------------------------------------

  send(conversationId, body) {
    this.#deliver(this.outbox.add(conversationId, body))
  }

  retry(clientMsgId) {
    const item = this.outbox.retry(clientMsgId)
    if (item) this.#deliver(item)
    this.#chat.render()
  }

  // Over the WebSocket when it is live, else by HTTP; either way the same client_msg_id,
  // so sending again after a drop can never make a second message.
  async #deliver(item) {
    const frame = { type: "send", conversation_id: item.conversation_id, body: item.body, client_msg_id: item.client_msg_id }
    if (this.#connection?.send(frame)) return
    try {
      const { message } = await this.api.post(`/conversations/${item.conversation_id}/messages`, { body: item.body, client_msg_id: item.client_msg_id })
      this.#message(message)
    } catch (error) {
      if (!error.retryable) this.outbox.failed(item.client_msg_id, error.message)
      else setTimeout(() => this.outbox.get(item.client_msg_id) && !this.outbox.get(item.client_msg_id).failed && this.#deliver(item), RETRY_SEND_MS)
    }
  }

  #flush() {
    for (const item of this.outbox.waiting()) this.#deliver(item)
    if (this.openId) this.#chat.render()
  }

  #sendFailed(frame) {
    const item = frame.client_msg_id && this.outbox.get(frame.client_msg_id)
    if (!item) return
    if (frame.code === "rate_limited" || frame.code === "unavailable" || frame.code === "internal_error") {
      setTimeout(() => this.#deliver(item), 1000 * (frame.retry_after ?? 2))
    } else {
      this.outbox.failed(item.client_msg_id, frame.message)
    }
  }

  saidTyping(conversationId) {
    if (this.typing.shouldSay(conversationId)) this.#connection?.send({ type: "typing", conversation_id: conversationId })
  }

  markRead(conversationId, messageId) {
    const marked = this.#marked.get(conversationId)
    if (marked && BigInt(marked) >= BigInt(messageId)) return
    this.#marked.set(conversationId, messageId)
    this.conversations.read(conversationId)
    const frame = { type: "read", conversation_id: conversationId, message_id: messageId }
    if (!this.#connection?.send(frame)) this.api.put(`/conversations/${conversationId}/read`, { message_id: messageId }).catch(() => this.#marked.delete(conversationId))
  }

  // -- dialogs and the session --------------------------------------------------------------

  newConversation() { newConversation(this) }

  invite() { invitations(this) }

  showMembers(conversation) { members(this, conversation) }

  async adopt(conversation) {
    await this.#conversation(conversation)
    location.hash = `#/c/${conversation.id}`
  }

  left(conversationId) {
    this.conversations.put({ id: conversationId }, false)
    location.hash = "#/"
  }

  async logOut() {
    await this.notifications.forget().catch(() => {})
    await this.api.delete("/sessions/current").catch(() => {})
    this.signedOut("")
  }

  signedOut(notice) {
    this.#connection?.stop()
    this.#connection = null
    Session.clear()
    this.session = null
    this.api.token = null
    this.#histories.clear()
    this.#marked.clear()
    location.hash = ""
    this.#auth(notice)
  }
}

// The code of an invitation link (#invite=CODE), taken out of the address bar so that it
// is neither bookmarked nor left in the history.
function takeInvitation() {
  const found = /^#invite=([\w-]+)$/.exec(location.hash)
  if (!found) return ""
  history.replaceState(null, "", location.pathname + location.search)
  return found[1]
}

new App().start()
