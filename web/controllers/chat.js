// The right pane: one conversation's header, its history (older pages load as you scroll
// up, the scroll position kept), messages still on their way, who is typing, and the
// composer (Enter sends, Shift+Enter starts a new line).

import { announce, h, replace } from "../dom.js"
import { avatar, clock, dayHeading, dayKey, linkify, members, title } from "../models/format.js"

const RUN_MS = 5 * 60 * 1000 // one sender's messages closer than this share a heading
const NEAR_BOTTOM_PX = 80

export default class Chat {
  #app
  #conversation = null
  #history = null
  #firstUnread = null // the id of the oldest message that was unread when the conversation opened
  // Drawn anew on each change, so not a live region itself: new messages are announced
  // through the page's announcer instead.
  #list = h("div", { class: "messages", role: "region", "aria-label": "Messages", tabindex: "0" })
  #top = h("div", { class: "older" })
  #typing = h("div", { class: "typing", "aria-live": "polite" })
  #input = h("textarea", { rows: 1, placeholder: "Write a message", "aria-label": "Message", maxlength: 4000 })
  #title = h("h2", {})
  #membersButton = h("button", { class: "button", type: "button" }, "Members")
  #observer
  element

  constructor(app) {
    this.#app = app
    this.#observer = new IntersectionObserver((seen) => seen.some((e) => e.isIntersecting) && this.#older(), { root: this.#list })
    this.#input.addEventListener("keydown", (event) => this.#key(event))
    this.#input.addEventListener("input", () => this.#typed())
    this.#membersButton.addEventListener("click", () => app.showMembers(this.#conversation))
    this.#list.addEventListener("scroll", () => this.#maybeRead())
    document.addEventListener("visibilitychange", () => this.#maybeRead())
    window.addEventListener("focus", () => this.#maybeRead())
    this.element = h("section", { class: "chat", "aria-label": "Conversation" }, this.#empty())
  }

  get openId() { return this.#conversation?.id ?? null }

  #empty() {
    return h("div", { class: "empty-chat" }, h("strong", {}, "Pick a conversation"), h("span", {}, "or start a new one with New."))
  }

  close() {
    this.#conversation = null
    this.#history = null
    replace(this.element, this.#empty())
  }

  async open(conversation, history) {
    const switched = this.#conversation?.id !== conversation.id
    this.#conversation = conversation
    this.#history = history
    if (switched) {
      this.#input.value = ""
      replace(this.element,
        h("header", { class: "bar" },
          h("a", { class: "icon-button back", href: "#/", "aria-label": "Back to conversations" }, "←"),
          this.#title,
          this.#membersButton,
        ),
        this.#list,
        this.#typing,
        h("form", { class: "composer", onsubmit: (e) => { e.preventDefault(); this.#send() } },
          this.#input,
          h("button", { class: "button primary", type: "submit" }, "Send"),
        ),
      )
      replace(this.#list, h("p", { class: "older" }, "Loading…"))
    }
    this.header()
    if (!history.loaded) {
      await history.latest()
      history.loaded = true
    }
    if (this.#conversation?.id !== conversation.id) return // another was opened meanwhile
    if (switched) this.#firstUnread = this.#oldestUnread(conversation.unread_count)
    this.render({ toBottom: true })
    if (switched && matchMedia("(min-width: 721px)").matches) this.#input.focus()
  }

  // Where "New" goes: before the unread_count-th newest message from someone else.
  #oldestUnread(count) {
    const me = this.#app.session.user.id
    const theirs = this.#history.messages.filter((m) => m.sender_id !== me)
    return count > 0 && count <= theirs.length ? theirs[theirs.length - count].id : null
  }

  header() {
    if (!this.#conversation) return
    const c = this.#app.conversations.get(this.#conversation.id) ?? this.#conversation // the latest view
    this.#conversation = c
    const app = this.#app
    const name = title(c, app.session.user, app.users)
    const sub = c.type === "group" ? members(c.members.length) : "Direct messages"
    replace(this.#title, name, h("span", { class: "sub" }, sub))
    this.#membersButton.hidden = c.type !== "group"
    document.title = `${name} · Kibitz`
  }

  // Draw the history again; keep the reader's place unless they were at the newest.
  render({ toBottom = false } = {}) {
    if (!this.#conversation || !this.#history) return
    const list = this.#list
    const atBottom = toBottom || list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX
    const fromBottom = list.scrollHeight - list.scrollTop
    const nodes = [this.#top]
    this.#top.textContent = this.#history.hasOlder ? "Loading older messages…" : "The start of the conversation"
    let day = null
    let previous = null
    const pending = this.#app.outbox.in(this.#conversation.id).map((item) => ({ ...item, sender_id: this.#app.session.user.id, pending: true }))
    for (const message of [...this.#history.messages, ...pending]) {
      const key = dayKey(message.created_at)
      if (key !== day) {
        nodes.push(h("div", { class: "day", role: "separator" }, dayHeading(message.created_at)))
        day = key
        previous = null
      }
      const unread = message.id === this.#firstUnread
      if (unread) nodes.push(h("div", { class: "unread-line", role: "separator" }, h("span", {}, "New")))
      const first = unread || !previous || previous.sender_id !== message.sender_id || Date.parse(message.created_at) - Date.parse(previous.created_at) > RUN_MS
      nodes.push(this.#message(message, first))
      previous = message
    }
    replace(list, nodes)
    this.#observer.disconnect()
    if (this.#history.hasOlder) this.#observer.observe(this.#top)
    list.scrollTop = atBottom ? list.scrollHeight : list.scrollHeight - fromBottom
    this.showTyping()
    this.#maybeRead()
  }

  #message(message, first) {
    const app = this.#app
    const mine = message.sender_id === app.session.user.id
    const sender = app.users.cached(message.sender_id) ?? { id: message.sender_id, display_name: "…" }
    const state = message.pending ? (message.failed ? " failed" : " pending") : ""
    const meta = message.pending
      ? message.failed
        ? h("span", { class: "meta" }, `Not sent: ${message.failed} `, h("button", { class: "retry", type: "button", onclick: () => app.retry(message.client_msg_id) }, "Retry"))
        : h("span", { class: "meta" }, "Sending…")
      : h("time", { class: "meta", datetime: message.created_at }, clock(message.created_at))
    return h("div", { class: `message${mine ? " mine" : ""}${first ? " first" : ""}${state}`, dataset: { id: message.id ?? message.client_msg_id } },
      avatar(sender, true),
      h("div", { class: "bubble" },
        first && this.#conversation.type === "group" ? h("span", { class: "sender" }, sender.display_name) : null,
        linkify(message.body),
      ),
      meta,
    )
  }

  // A message arrived for the open conversation.
  added(message) {
    this.render()
    if (message.sender_id !== this.#app.session.user.id) {
      announce(`${this.#app.users.cached(message.sender_id)?.display_name ?? "Someone"}: ${message.body.slice(0, 120)}`)
    }
  }

  showTyping() {
    const c = this.#conversation
    if (!c) return
    const names = this.#app.typing.in(c.id).map((id) => this.#app.users.cached(id)?.display_name ?? "Someone")
    this.#typing.textContent =
      names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : "Several people are typing…"
  }

  async #older() {
    const history = this.#history
    if (!history?.hasOlder) return
    const added = await history.older().catch(() => 0)
    if (added || !history.hasOlder) this.render()
  }

  #key(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault()
      this.#send()
    }
  }

  #typed() {
    if (this.#conversation && this.#input.value) this.#app.saidTyping(this.#conversation.id)
  }

  #send() {
    const body = this.#input.value.trim()
    if (!body || !this.#conversation) return
    this.#input.value = ""
    this.#app.send(this.#conversation.id, body)
    this.render({ toBottom: true })
  }

  // Mark read when the newest message is on screen and the page is in front of the person.
  #maybeRead() {
    const c = this.#conversation
    const newest = this.#history?.newest
    if (!c || !newest || document.visibilityState !== "visible" || !document.hasFocus()) return
    const list = this.#list
    if (list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX) this.#app.markRead(c.id, newest.id)
  }
}
