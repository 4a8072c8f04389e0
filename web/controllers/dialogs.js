// Dialogs: starting a conversation (one person and no name: a direct chat; a name, or
// several people: a group), and a group's members (add, remove if you made it, leave).

import { h, replace } from "../dom.js"
import { avatar } from "../models/format.js"

function dialog(...content) {
  const element = h("dialog", {}, h("div", { class: "dialog" }, content))
  element.addEventListener("close", () => element.remove())
  document.body.append(element)
  element.showModal()
  return element
}

function person(user, extra = null) {
  return [avatar(user, true), h("span", { class: "name" }, user.display_name, h("small", {}, ` @${user.username}`)), extra]
}

// A search box whose results come from the server as you type.
function peoplePicker(app, { exclude = () => false, onPick }) {
  const input = h("input", { class: "input", type: "search", placeholder: "Search people by username", "aria-label": "Search people" })
  const results = h("ul", { class: "people", "aria-label": "People found" })
  let asked = 0
  async function search() {
    const mine = ++asked
    const users = await app.users.search(input.value.trim().toLowerCase()).catch(() => [])
    if (mine !== asked) return
    const shown = users.filter((u) => u.id !== app.session.user.id && !exclude(u))
    replace(results, shown.length
      ? shown.map((u) => h("li", {}, h("button", { class: "person", type: "button", onclick: () => onPick(u) }, person(u))))
      : h("li", { class: "hint" }, "Nobody by that name."))
  }
  input.addEventListener("input", search)
  search()
  return { input, results, refresh: search }
}

export function newConversation(app) {
  const chosen = new Map()
  const chips = h("div", { class: "chips", "aria-label": "Chosen" })
  const name = h("input", { class: "input", placeholder: "Group name (leave empty for a direct chat)", "aria-label": "Group name", maxlength: 128 })
  const error = h("p", { class: "error", role: "alert" })
  const start = h("button", { class: "button primary", type: "submit", disabled: true }, "Start chat")
  const picker = peoplePicker(app, {
    exclude: (u) => chosen.has(u.id),
    onPick: (u) => { chosen.set(u.id, u); update() },
  })

  function update() {
    replace(chips, [...chosen.values()].map((u) =>
      h("button", { class: "chip", type: "button", "aria-label": `Remove ${u.display_name}`, onclick: () => { chosen.delete(u.id); update() } }, `${u.display_name} ×`)))
    start.disabled = chosen.size === 0
    start.textContent = chosen.size > 1 || name.value.trim() ? "Create group" : "Start chat"
    picker.refresh()
    picker.input.focus()
  }
  name.addEventListener("input", () => { start.textContent = chosen.size > 1 || name.value.trim() ? "Create group" : "Start chat" })

  async function create(event) {
    event.preventDefault()
    const members = [...chosen.keys()]
    const group = members.length > 1 || Boolean(name.value.trim())
    if (group && !name.value.trim()) {
      error.textContent = "Give the group a name."
      name.focus()
      return
    }
    start.disabled = true
    try {
      const body = group
        ? await app.api.post("/conversations", { type: "group", name: name.value.trim(), members })
        : await app.api.post("/conversations", { type: "direct", members })
      element.close()
      app.adopt(body.conversation)
    } catch (failure) {
      error.textContent = failure.message
      start.disabled = false
    }
  }

  const element = dialog(
    h("h2", {}, "New conversation"),
    h("p", { class: "hint" }, "Pick one person for a direct chat; name it, or pick several, for a group."),
    picker.input, chips, picker.results, name, error,
    h("form", { class: "row", onsubmit: create },
      h("button", { class: "button", type: "button", onclick: () => element.close() }, "Cancel"),
      start,
    ),
  )
  picker.input.focus()
}

export async function members(app, conversation) {
  const me = app.session.user
  const list = h("ul", { class: "people", "aria-label": "Members" })
  const error = h("p", { class: "error", role: "alert" })

  async function draw() {
    const current = app.conversations.get(conversation.id) ?? conversation
    const people = (await app.users.all(current.members)).filter(Boolean)
    replace(list, people.map((u) => h("li", { class: "person" }, person(u,
      u.id === me.id
        ? h("button", { class: "button danger", type: "button", onclick: () => remove(u, true) }, "Leave")
        : current.creator_id === me.id
          ? h("button", { class: "button", type: "button", "aria-label": `Remove ${u.display_name}`, onclick: () => remove(u, false) }, "Remove")
          : null,
    ))))
  }

  async function remove(user, leaving) {
    try {
      await app.api.delete(`/conversations/${conversation.id}/members/${user.id}`)
      if (leaving) {
        element.close()
        app.left(conversation.id)
      }
    } catch (failure) {
      error.textContent = failure.code === "forbidden" ? "Only the group's creator can remove others." : failure.message
    }
  }

  const picker = peoplePicker(app, {
    exclude: (u) => (app.conversations.get(conversation.id) ?? conversation).members.includes(u.id),
    onPick: async (u) => {
      try {
        const body = await app.api.post(`/conversations/${conversation.id}/members`, { user_id: u.id })
        app.conversations.put(body.conversation)
        picker.refresh()
        await draw()
      } catch (failure) {
        error.textContent = failure.message
      }
    },
  })
  const element = dialog(
    h("h2", {}, `Members of ${conversation.name}`),
    list,
    h("h3", { class: "hint" }, "Add someone"),
    picker.input, picker.results, error,
    h("div", { class: "row" }, h("button", { class: "button", type: "button", onclick: () => element.close() }, "Done")),
  )
  await draw()
  app.conversations.addEventListener("change", draw)
  element.addEventListener("close", () => app.conversations.removeEventListener("change", draw))
}

// An administrator's invitations: make a sign-up link (one person or several, until an
// expiry), copy it, and revoke the ones still open.
const EXPIRIES = [["1 day", 86400], ["7 days", 7 * 86400], ["30 days", 30 * 86400], ["Never", null]]

export async function invitations(app) {
  const uses = h("input", { class: "input", type: "number", min: 1, max: 1000, value: 1, "aria-label": "People who may sign up with it" })
  const expiry = h("select", { class: "input", "aria-label": "Expires after" },
    EXPIRIES.map(([label], i) => h("option", { value: String(i), selected: i === 1 }, label)))
  const link = h("input", { class: "input", readonly: true, "aria-label": "Invitation link", hidden: true })
  const copy = h("button", { class: "button", type: "button", hidden: true, onclick: () => navigator.clipboard?.writeText(link.value).then(() => { copy.textContent = "Copied" }) }, "Copy link")
  const error = h("p", { class: "error", role: "alert" })
  const open = h("ul", { class: "people", "aria-label": "Open invitations" })

  async function draw() {
    const { invitations } = await app.api.get("/invitations")
    const active = invitations.filter((i) => i.state === "active")
    replace(open, active.length ? active.map((i) => h("li", { class: "person" },
      h("span", { class: "name" }, `${i.uses} of ${i.uses_allowed} used`, h("small", {}, i.expires_at ? ` · until ${new Date(i.expires_at).toLocaleDateString()}` : " · no expiry")),
      h("button", { class: "button", type: "button", onclick: () => revoke(i.id) }, "Revoke"))) : h("li", { class: "hint" }, "No open invitations."))
  }

  async function revoke(id) {
    try {
      await app.api.delete(`/invitations/${id}`)
      await draw()
    } catch (failure) {
      error.textContent = failure.message
    }
  }

  async function create(event) {
    event.preventDefault()
    error.textContent = ""
    try {
      const made = await app.api.post("/invitations", { uses: Number(uses.value), expires_in: EXPIRIES[Number(expiry.value)][1] ?? undefined })
      link.value = made.link
      link.hidden = copy.hidden = false
      copy.textContent = "Copy link"
      link.select()
      await draw()
    } catch (failure) {
      error.textContent = failure.message
    }
  }

  const element = dialog(
    h("h2", {}, "Invite people"),
    h("form", { class: "dialog-form", onsubmit: create },
      h("label", { class: "field" }, h("span", {}, "People who may sign up with it"), uses),
      h("label", { class: "field" }, h("span", {}, "Expires after"), expiry),
      h("div", { class: "row" }, h("button", { class: "button primary", type: "submit" }, "Make a link")),
    ),
    link, copy, error,
    h("h3", { class: "hint" }, "Open invitations"),
    open,
    h("div", { class: "row" }, h("button", { class: "button", type: "button", onclick: () => element.close() }, "Done")),
  )
  await draw().catch((failure) => { error.textContent = failure.message })
}
