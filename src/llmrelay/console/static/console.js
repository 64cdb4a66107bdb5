// Copy buttons: <button data-copy="ID"> copies the value of the element with that id.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  const status = document.querySelector(".status");
  try {
    await navigator.clipboard.writeText(field.value);
    if (status) status.textContent = "Copied to the clipboard.";
  } catch (err) {
    field.select();
    if (status) status.textContent = "Copying failed: the text is selected, press Ctrl+C.";
  }
});
