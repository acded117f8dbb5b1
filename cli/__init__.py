"""Every console script (merc-live, merc-replay, merc-track, merc-train, merc-eval, merc-export, merc-synth,
merc-experts, merc-end-of-turn, merc-serve, merc-batch): the only code that parses arguments. It turns
them into the library's options dataclasses and maps every MercError to one line and exit status 2."""
