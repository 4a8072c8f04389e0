// Who is typing where: a typing event lasts a few seconds, or until that person's message
// arrives. And how often this tab says it is typing (at most every two seconds).

const SHOWN_MS = 4000
const SAY_EVERY_MS = 2000

export default class Typing extends EventTarget {
  #typing = new Map() // conversation id: Map(user id: timer)
  #said = new Map() // conversation id: when this tab last said so

  saw(conversationId, userId) {
    const people = this.#typing.get(conversationId) ?? new Map()
    this.#typing.set(conversationId, people)
    clearTimeout(people.get(userId))
    people.set(userId, setTimeout(() => this.stopped(conversationId, userId), SHOWN_MS))
    this.#changed(conversationId)
  }

  stopped(conversationId, userId) {
    const people = this.#typing.get(conversationId)
    if (!people?.has(userId)) return
    clearTimeout(people.get(userId))
    people.delete(userId)
    this.#changed(conversationId)
  }

  in(conversationId) { return [...(this.#typing.get(conversationId)?.keys() ?? [])] }

  // Whether to tell the others now that I am typing here.
  shouldSay(conversationId) {
    const now = Date.now()
    if (now - (this.#said.get(conversationId) ?? 0) < SAY_EVERY_MS) return false
    this.#said.set(conversationId, now)
    return true
  }

  #changed(conversationId) {
    this.dispatchEvent(new CustomEvent("change", { detail: conversationId }))
  }
}
