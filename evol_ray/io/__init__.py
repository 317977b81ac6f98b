"""Storage (`storage`: local or S3), seed input (`seeds`), the output layout (`layout`), the one
commit protocol (`commit`) and Ray Data reads of committed files (`datasets`)."""
