// Admin pages: a button with data-busy="Testing…" says so and is disabled while its form is
// sent (a channel test can take seconds), so it is not pressed twice.
document.addEventListener("submit", (event) => {
  const button = event.target.querySelector("button[data-busy]");
  if (!button) return;
  button.textContent = button.dataset.busy;
  // After this turn, so the submission is not cancelled by disabling its button.
  setTimeout(() => { button.disabled = true; }, 0);
});
