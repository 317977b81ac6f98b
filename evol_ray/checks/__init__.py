"""CPU checks on generated rows: the one text normalization (`text`), quality filters
(`quality`), MinHash signatures (`minhash`), dedup (`dedup`), and where they run (`where`)."""
