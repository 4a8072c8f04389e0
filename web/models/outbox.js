// Messages on their way: shown at once as pending, kept (also across a reload) until the
// server has them, and sent again with the same client_msg_id after any drop, so a resend
// can never make a second message.

const KEY = "kibitz.outbox"

export default class Outbox extends EventTarget {
  #items = new Map() // client_msg_id: {client_msg_id, conversation_id, body, created_at, failed}

  constructor(userId) {
    super()
    this.key = `${KEY}.${userId}`
    try {
      for (const item of JSON.parse(localStorage.getItem(this.key)) ?? []) this.#items.set(item.client_msg_id, item)
    } catch {
      localStorage.removeItem(this.key)
    }
  }

  add(conversationId, body) {
    const item = {
      client_msg_id: crypto.randomUUID(), conversation_id: conversationId, body,
      created_at: new Date().toISOString(), failed: null,
    }
    this.#items.set(item.client_msg_id, item)
    this.#changed(conversationId)
    return item
  }

  get(clientMsgId) { return this.#items.get(clientMsgId) }

  waiting() { return [...this.#items.values()].filter((item) => !item.failed) }

  in(conversationId) {
    return [...this.#items.values()].filter((item) => item.conversation_id === conversationId)
  }

  // The server has it (a `sent` answer, or the message came back as an event).
  done(clientMsgId) {
    const item = this.#items.get(clientMsgId)
    if (!item) return
    this.#items.delete(clientMsgId)
    this.#changed(item.conversation_id)
  }

  // Refused for good (too long, not a member any more ...): shown with the reason, kept to retry.
  failed(clientMsgId, reason) {
    const item = this.#items.get(clientMsgId)
    if (!item) return
    item.failed = reason
    this.#changed(item.conversation_id)
  }

  retry(clientMsgId) {
    const item = this.#items.get(clientMsgId)
    if (item) item.failed = null
    return item
  }

  #changed(conversationId) {
    localStorage.setItem(this.key, JSON.stringify([...this.#items.values()]))
    this.dispatchEvent(new CustomEvent("change", { detail: conversationId }))
  }
}
