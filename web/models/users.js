// People by id, fetched once and remembered.

export default class Users {
  #api
  #known = new Map()
  #asked = new Map()

  constructor(api) { this.#api = api }

  remember(user) {
    if (user?.id) this.#known.set(user.id, user)
    return user
  }

  cached(id) { return this.#known.get(id) }

  async get(id) {
    if (this.#known.has(id)) return this.#known.get(id)
    if (!this.#asked.has(id)) {
      this.#asked.set(id, this.#api.get(`/users/${id}`).then((body) => this.remember(body.user)).finally(() => this.#asked.delete(id)))
    }
    return this.#asked.get(id)
  }

  async all(ids) { return Promise.all(ids.map((id) => this.get(id).catch(() => null))) }

  search(prefix) { return this.#api.get(`/users?query=${encodeURIComponent(prefix)}&limit=20`).then((b) => b.users.map((u) => this.remember(u))) }
}
