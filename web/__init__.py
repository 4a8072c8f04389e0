"""The web client's files (HTML, ES modules, CSS, the service worker), shipped in the wheel
as package data and served by ``kibitz.web``. No build step: what is here is what runs."""
