// The left pane: who I am and whether Kibitz is live, the notifications prompt, the
// search, and the conversations by recent activity with their unread counts.

import { h, replace } from "../dom.js"
import { avatar, members, title, when } from "../models/format.js"

const STATES = {
  connecting: "Connecting…",
  live: "Live",
  polling: "Live (polling)",
  offline: "Offline",
}

export default class Sidebar {
  #app
  #list = h("ul", { class: "conversations", "aria-label": "Conversations" })
  #filter = h("input", { class: "input", type: "search", placeholder: "Search conversations", "aria-label": "Search conversations" })
  #status = h("span", { class: "status connecting", role: "status" }, STATES.connecting)
  #banner = h("div", { class: "banner", hidden: true })
  #invite
  element

  constructor(app) {
    this.#app = app
    const me = app.session.user
    this.#filter.addEventListener("input", () => this.render())
    this.#invite = h("button", { class: "icon-button", type: "button", hidden: true, onclick: () => app.invite() }, "Invite")
    this.element = h("aside", { class: "sidebar", "aria-label": "Conversations" },
      h("header", { class: "bar" },
        h("div", { class: "me" }, avatar(me, true), h("strong", {}, me.display_name)),
        this.#status,
        this.#invite,
        h("button", { class: "icon-button", type: "button", onclick: () => app.logOut() }, "Log out"),
      ),
      this.#banner,
      h("div", { class: "search" },
        this.#filter,
        h("button", { class: "button primary", type: "button", onclick: () => app.newConversation(), "aria-label": "New conversation" }, "New"),
      ),
      this.#list,
    )
    this.showNotificationsPrompt()
  }

  // Administrators invite people from here (GET /me says who is one).
  offerInvitations() {
    this.#invite.hidden = false
  }

  state(state) {
    this.#status.className = `status ${state}`
    this.#status.textContent = STATES[state] ?? state
    this.#status.title = state === "offline" ? "Messages you write are sent once Kibitz is back" : ""
  }

  showNotificationsPrompt() {
    const notifications = this.#app.notifications
    const dismissed = sessionStorage.getItem("kibitz.notifications.later")
    this.#banner.hidden = notifications.permission !== "default" || Boolean(dismissed)
    if (this.#banner.hidden) return
    const enable = async () => {
      try {
        await notifications.enable()
      } finally {
        this.showNotificationsPrompt()
      }
    }
    replace(this.#banner,
      h("span", {}, "Get notified of new messages, even when Kibitz is closed."),
      h("div", { class: "actions" },
        h("button", { class: "button primary", type: "button", onclick: enable }, "Turn on notifications"),
        h("button", { class: "button", type: "button", onclick: () => { sessionStorage.setItem("kibitz.notifications.later", "1"); this.showNotificationsPrompt() } }, "Not now"),
      ),
    )
  }

  render() {
    const app = this.#app
    const wanted = this.#filter.value.trim().toLowerCase()
    const items = app.conversations.sorted().filter((c) => !wanted || title(c, app.session.user, app.users).toLowerCase().includes(wanted))
    if (!items.length) {
      replace(this.#list, h("li", { class: "nothing" }, wanted ? "No conversation matches." : "No conversations yet. Start one with New."))
      return
    }
    replace(this.#list, items.map((c) => h("li", {}, this.#item(c))))
  }

  #item(conversation) {
    const app = this.#app
    const me = app.session.user
    const name = title(conversation, me, app.users)
    const last = conversation.last_message
    const other = conversation.type === "direct" ? app.users.cached(conversation.members.find((id) => id !== me.id)) : null
    let preview = conversation.type === "group" ? members(conversation.members.length) : "No messages yet"
    if (last) {
      const who = last.sender_id === me.id ? "You" : conversation.type === "group" ? app.users.cached(last.sender_id)?.display_name : null
      preview = who ? `${who}: ${last.body}` : last.body
    }
    const unread = conversation.unread_count
    return h("a", {
      class: `conversation${unread ? " unread" : ""}`,
      href: `#/c/${conversation.id}`,
      "aria-current": app.openId === conversation.id ? "page" : null,
      "aria-label": `${name}${unread ? `, ${unread} unread` : ""}`,
    },
      avatar(other ?? { id: conversation.id, display_name: name }),
      h("span", { class: "title" }, name),
      h("span", { class: "when" }, last ? when(last.created_at) : ""),
      h("span", { class: "preview" }, preview),
      unread ? h("span", { class: "badge", "aria-hidden": "true" }, unread > 99 ? "99+" : String(unread)) : h("span"),
    )
  }
}
