"""The records: MedSynth loaded and cleaned, the embedded demo set, splits per code (`prepare` only)."""
