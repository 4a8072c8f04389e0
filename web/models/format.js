// Words and times as the viewer reads them: their time zone and language, day headings,
// names of conversations, and links that are made clickable without parsing any HTML.

import { h } from "../dom.js"

const time = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" })
const weekday = new Intl.DateTimeFormat(undefined, { weekday: "long" })
const date = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" })
const fullDate = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" })
const dayStart = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime()
const DAY_MS = 86_400_000

export const clock = (iso) => time.format(new Date(iso))

export const members = (count) => `${count} member${count === 1 ? "" : "s"}`

export function dayKey(iso) {
  const d = new Date(iso)
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`
}

export function dayHeading(iso) {
  const d = new Date(iso)
  const days = Math.round((dayStart(new Date()) - dayStart(d)) / DAY_MS)
  if (days === 0) return "Today"
  if (days === 1) return "Yesterday"
  if (days > 1 && days < 7) return weekday.format(d)
  return d.getFullYear() === new Date().getFullYear() ? date.format(d) : fullDate.format(d)
}

// In the conversation list: the time today, else the day.
export function when(iso) {
  const days = Math.round((dayStart(new Date()) - dayStart(new Date(iso))) / DAY_MS)
  return days === 0 ? clock(iso) : dayHeading(iso)
}

export function initials(name) {
  const words = String(name || "?").trim().split(/\s+/)
  return (words.length > 1 ? words[0][0] + words.at(-1)[0] : words[0].slice(0, 2)) || "?"
}

export function hue(id) {
  let n = 0
  for (const c of String(id)) n = (n * 31 + c.charCodeAt(0)) % 8
  return `hue-${n}`
}

export function avatar(user, small = false) {
  const name = user?.display_name ?? "?"
  return h("span", { class: `avatar ${small ? "small " : ""}${hue(user?.id ?? name)}`, "aria-hidden": "true" }, initials(name))
}

// A conversation's title for this viewer: a group's name, or the other person's name.
export function title(conversation, me, users) {
  if (conversation.type === "group") return conversation.name
  const other = conversation.members.find((id) => id !== me.id) ?? me.id
  return users.cached(other)?.display_name ?? "…"
}

const LINK = /\bhttps?:\/\/[^\s<>"]+[^\s<>".,:;!?')\]]/gi

// Text with its http(s) links as anchors; everything else stays text nodes.
export function linkify(text) {
  const parts = []
  let at = 0
  for (const match of text.matchAll(LINK)) {
    if (match.index > at) parts.push(text.slice(at, match.index))
    parts.push(h("a", { href: match[0], target: "_blank", rel: "noopener noreferrer" }, match[0]))
    at = match.index + match[0].length
  }
  if (at < text.length) parts.push(text.slice(at))
  return parts
}
