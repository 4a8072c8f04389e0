// Building the page from data without ever parsing data as HTML: text always goes in as
// text nodes, so a message or a name can never become markup or script.

// h("button", {class: "primary", onclick: send}, "Send") makes the element with those
// attributes, listeners ("on…") and children (nodes, or strings taken as text).
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag)
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue
    if (key.startsWith("on") && typeof value === "function") element.addEventListener(key.slice(2), value)
    else if (key === "class") element.className = value
    else if (key === "dataset") Object.assign(element.dataset, value)
    else element.setAttribute(key, value === true ? "" : String(value))
  }
  append(element, children)
  return element
}

export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue
    element.append(child instanceof Node ? child : String(child))
  }
  return element
}

export function replace(element, ...children) {
  element.replaceChildren()
  return append(element, children)
}

// Say something to screen readers through the page's polite live region.
export function announce(text) {
  const region = document.getElementById("announcer")
  if (region) region.textContent = text
}
