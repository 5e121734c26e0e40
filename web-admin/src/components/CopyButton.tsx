// Copies a secret or command to the clipboard. The Clipboard API needs a secure context; on
// plain HTTP it falls back to selecting the text so the person can copy it themselves.

import { useState } from "react";

export function CopyButton({ text, label, targetId }: { text: string; label: string; targetId?: string }) {
  const [result, setResult] = useState<string | null>(null);

  const copy = async () => {
    try {
      if (!navigator.clipboard) throw new Error("no clipboard");
      await navigator.clipboard.writeText(text);
      setResult("Copied.");
    } catch {
      const target = targetId ? document.getElementById(targetId) : null;
      if (target instanceof HTMLTextAreaElement || target instanceof HTMLInputElement) {
        target.focus();
        target.select();
        setResult("Selected: press Ctrl+C (⌘C) to copy.");
      } else {
        setResult("Copying is not available here; select the text and copy it.");
      }
    }
  };

  return (
    <span className="copy">
      <button type="button" onClick={() => void copy()}>
        {label}
      </button>
      <span role="status" className="copy-result">
        {result}
      </span>
    </span>
  );
}
