// The signed-in user's conversations, as the server reports them, kept current by events:
// most recent activity first, with the last message and the unread count.

const activity = (c) => c.last_message?.created_at ?? c.created_at

export default class Conversations extends EventTarget {
  #byId = new Map()

  load(list) {
    this.#byId = new Map(list.map((c) => [c.id, c]))
    this.#changed()
  }

  get(id) { return this.#byId.get(id) }

  sorted() {
    return [...this.#byId.values()].sort((a, b) => activity(b).localeCompare(activity(a)) || Number(b.id) - Number(a.id))
  }

  // A `conversation` event or answer: created, joined, members changed (or left: `mine` false).
  put(conversation, stillMember = true) {
    if (stillMember) this.#byId.set(conversation.id, conversation)
    else this.#byId.delete(conversation.id)
    this.#changed(conversation.id)
  }

  // A new message: the latest of its conversation; unread unless it is mine or being read.
  message(message, { mine, seen }) {
    const conversation = this.#byId.get(message.conversation_id)
    if (!conversation) return false
    const last = conversation.last_message
    if (!last || BigInt(message.id) > BigInt(last.id)) conversation.last_message = message
    if (!mine && !seen && (!last || BigInt(message.id) > BigInt(last.id))) conversation.unread_count += 1
    this.#changed(conversation.id)
    return true
  }

  read(conversationId) {
    const conversation = this.#byId.get(conversationId)
    if (conversation && conversation.unread_count) {
      conversation.unread_count = 0
      this.#changed(conversationId)
    }
  }

  unread() { return [...this.#byId.values()].reduce((sum, c) => sum + c.unread_count, 0) }

  #changed(id = null) {
    this.dispatchEvent(new CustomEvent("change", { detail: id }))
  }
}
