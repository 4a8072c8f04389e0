// Logging in and signing up: one card, two tabs, the protocol's errors in plain words.

import { h, replace } from "../dom.js"
import Session from "../models/session.js"

const SAY = {
  username_taken: "That username is taken. Try another.",
  registration_closed: "Sign-up is closed on this server. Ask whoever runs it for an account.",
  unauthorized: "Wrong username or password.",
  rate_limited: "Too many tries. Wait a minute, then try again.",
  offline: "Kibitz cannot be reached. Check your connection.",
}
const INVITATION_REFUSED = "That invitation code does not work: it may be used up, expired or revoked. Ask for a new one."

// `invitation`: a code from an invitation link (#invite=CODE), which opens the sign-up tab.
export default function showAuth(root, api, { onSession, notice = "", invitation = "" }) {
  let mode = "login"
  let registration = "open"
  const error = h("p", { class: "error", role: "alert" }, notice)
  const username = h("input", { class: "input", name: "username", autocomplete: "username", required: true, minlength: 3, maxlength: 32, autocapitalize: "none", spellcheck: "false" })
  const password = h("input", { class: "input", name: "password", type: "password", autocomplete: "current-password", required: true, minlength: 8 })
  const displayName = h("input", { class: "input", name: "display_name", autocomplete: "name", maxlength: 64 })
  const nameField = h("label", { class: "field", hidden: true }, h("span", {}, "Your name, as others see it"), displayName)
  const code = h("input", { class: "input", name: "invitation", autocomplete: "off", spellcheck: "false", value: invitation })
  const codeField = h("label", { class: "field", hidden: true }, h("span", {}, "Invitation code"), code)
  const submit = h("button", { class: "button primary", type: "submit" }, "Log in")
  const tabs = ["login", "signup"].map((which) =>
    h("button", { class: "tab", type: "button", role: "tab", "aria-selected": String(which === mode), onclick: () => choose(which) },
      which === "login" ? "Log in" : "Sign up"),
  )

  function choose(which) {
    mode = which
    tabs.forEach((tab, i) => tab.setAttribute("aria-selected", String(["login", "signup"][i] === which)))
    password.autocomplete = which === "signup" ? "new-password" : "current-password"
    submit.textContent = which === "signup" ? "Create account" : "Log in"
    error.textContent = ""
    showFields()
  }

  function showFields() {
    nameField.hidden = mode !== "signup"
    codeField.hidden = mode !== "signup" || registration !== "invite"
    code.required = !codeField.hidden
  }

  async function send(event) {
    event.preventDefault()
    submit.disabled = true
    error.textContent = ""
    try {
      const name = username.value.trim()
      if (mode === "signup") {
        await api.post("/accounts", {
          username: name,
          password: password.value,
          display_name: displayName.value.trim() || undefined,
          invitation: registration === "invite" ? code.value.trim() : undefined,
        })
      }
      const body = await api.post("/sessions", { username: name, password: password.value, device_name: deviceName() })
      const session = new Session(body)
      session.save()
      onSession(session)
    } catch (failure) {
      const invited = failure.code === "registration_closed" && registration === "invite"
      error.textContent = invited ? INVITATION_REFUSED : SAY[failure.code] ?? failure.message
      submit.disabled = false
    }
  }

  const form = h("form", { class: "card", onsubmit: send, "aria-label": "Log in or sign up" },
    h("div", { class: "tabs", role: "tablist" }, tabs),
    h("label", { class: "field" }, h("span", {}, "Username"), username),
    h("label", { class: "field" }, h("span", {}, "Password (at least 8 characters)"), password),
    nameField,
    codeField,
    error,
    submit,
  )
  replace(root, h("main", { class: "auth" }, h("div", { class: "brand" }, h("img", { src: iconUrl(), alt: "" }), "Kibitz"), form))
  if (invitation) choose("signup")
  username.focus()
  // How this server signs people up decides whether the form asks for an invitation.
  api.get("/discovery").then((found) => {
    registration = found.registration ?? "open"
    showFields()
  }, () => {})
}

function iconUrl() {
  return document.querySelector('link[rel="icon"]')?.getAttribute("href") ?? ""
}

// "Firefox on Linux": how this device shows in the list of devices.
function deviceName() {
  const agent = navigator.userAgent
  const browser = /Firefox\//.test(agent) ? "Firefox" : /Edg\//.test(agent) ? "Edge" : /Chrom/.test(agent) ? "Chrome" : /Safari\//.test(agent) ? "Safari" : "Browser"
  const system = /Android/.test(agent) ? "Android" : /iPhone|iPad/.test(agent) ? "iOS" : /Mac OS/.test(agent) ? "macOS" : /Windows/.test(agent) ? "Windows" : /Linux/.test(agent) ? "Linux" : ""
  return system ? `${browser} on ${system}` : browser
}
