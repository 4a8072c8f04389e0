// Who is signed in on this browser: the device's token, kept in this origin's storage only
// (never in a URL), and the user it belongs to.

const KEY = "kibitz.session"

export default class Session {
  constructor({ token, user, device }) {
    this.token = token
    this.user = user
    this.device = device
  }

  static load() {
    try {
      const saved = JSON.parse(localStorage.getItem(KEY))
      return saved?.token ? new Session(saved) : null
    } catch {
      return null
    }
  }

  save() {
    localStorage.setItem(KEY, JSON.stringify({ token: this.token, user: this.user, device: this.device }))
  }

  static clear() {
    localStorage.removeItem(KEY)
  }
}
