// The HTTP half of the Kibitz protocol: JSON in and out, the token, the protocol's errors.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message)
    this.status = status // 0 when the server could not be reached
    this.code = code
  }

  get retryable() {
    return this.status === 0 || this.code === "unavailable" || this.code === "rate_limited"
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export default class Api {
  #token = null

  constructor({ onUnauthorized = () => {} } = {}) {
    this.onUnauthorized = onUnauthorized
  }

  set token(token) {
    this.#token = token
  }

  get(path, options) { return this.call("GET", path, undefined, options) }
  post(path, body, options) { return this.call("POST", path, body, options) }
  put(path, body, options) { return this.call("PUT", path, body, options) }
  delete(path, body, options) { return this.call("DELETE", path, body, options) }

  // One call; a 429 is waited out (its Retry-After) and tried again, a few times.
  async call(method, path, body, { signal, patience = 3 } = {}) {
    const headers = { Accept: "application/json" }
    if (body !== undefined) headers["Content-Type"] = "application/json"
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`
    for (let attempt = 0; ; attempt++) {
      let response
      try {
        response = await fetch(`/api/v1${path}`, {
          method, headers, signal, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
        })
      } catch (error) {
        if (error.name === "AbortError") throw error
        throw new ApiError(0, "offline", "Kibitz cannot be reached")
      }
      if (response.status === 429 && attempt < patience) {
        await sleep(1000 * Math.min(30, Number(response.headers.get("Retry-After")) || 1))
        continue
      }
      if (response.status === 204) return null
      const data = await response.json().catch(() => null)
      if (response.ok) return data
      const error = data?.error ?? {}
      if (response.status === 401 && this.#token) this.onUnauthorized()
      throw new ApiError(response.status, error.code ?? "unavailable", error.message ?? response.statusText)
    }
  }
}
