// One conversation's history as far as it has been loaded: ascending by id, newest last;
// older pages load on demand, live messages are added (each id once, whatever the order).

const PAGE = 50

export default class History {
  #api
  messages = []
  hasOlder = true
  #loading = null

  constructor(api, conversationId) {
    this.#api = api
    this.conversationId = conversationId
  }

  async latest() {
    const page = await this.#api.get(`/conversations/${this.conversationId}/messages?limit=${PAGE}`)
    this.messages = []
    this.hasOlder = page.has_more
    this.add(page.messages)
  }

  // The page before the oldest loaded; resolves to how many came.
  older() {
    if (!this.hasOlder || !this.messages.length) return Promise.resolve(0)
    this.#loading ??= this.#api
      .get(`/conversations/${this.conversationId}/messages?limit=${PAGE}&before=${this.messages[0].id}`)
      .then((page) => {
        this.hasOlder = page.has_more
        return this.add(page.messages)
      })
      .finally(() => { this.#loading = null })
    return this.#loading
  }

  // Add messages not seen yet; returns how many were new.
  add(messages) {
    const known = new Set(this.messages.map((m) => m.id))
    const fresh = messages.filter((m) => !known.has(m.id))
    if (!fresh.length) return 0
    this.messages = [...this.messages, ...fresh].sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1))
    return fresh.length
  }

  get newest() { return this.messages.at(-1) ?? null }
}
