"""Build contexts: `.dockerignore` rules, packing a context dir to a tar, unpacking it safely.

The pattern rules are a port of moby's `patternmatcher` and of the docker CLI's
context walk (`archive.TarWithOptions`), so that a context sends exactly the
files `docker build` would send:

- a line starting with `#` is a comment; lines are trimmed; `!` re-includes;
- patterns are `filepath.Clean`ed and a leading `/` is dropped;
- `*` and `?` never cross `/`, `**` spans any number of directories;
- the last matching pattern wins, and a pattern that matches a directory
  excludes everything below it;
- the Dockerfile and `.dockerignore` are always sent.

The tar is deterministic (sorted entries, uid/gid 0, mtime 0, no user names),
so an unchanged context has the same digest and need not be uploaded again.
"""

from shared.buildcontext.ignore import (DOCKERIGNORE, PatternMatcher, context_excludes, context_ignore,
                                        ignored_specials, read_dockerignore)
from shared.buildcontext.pack import (EXTERNAL_BLOB, EXTERNAL_MIN, EXTERNAL_SIZE, DigestCache,
                                      context_signature, pack_context, walk_context)
from shared.buildcontext.unpack import ContextIndex, unpack_context

__all__ = ["ContextIndex", "DOCKERIGNORE", "DigestCache", "EXTERNAL_BLOB", "EXTERNAL_MIN", "EXTERNAL_SIZE",
           "PatternMatcher", "context_excludes", "context_ignore", "context_signature", "ignored_specials", "pack_context",
           "read_dockerignore",
           "unpack_context", "walk_context"]
