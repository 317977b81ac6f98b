"""Reading a finished run (`runread`), difficulty scores (`score`), the report (`report`, `plots`)
and diversity metrics (`diversity`). Nothing here writes round data."""
