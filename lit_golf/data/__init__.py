"""Data pipeline: shard format (`shards`), tokenizer byte tables (`tokenizer`), `prepare-data`
(`prepare`, `demo_corpus`), `download`, the documents of a token stream (`documents`), the packed
train stream (`packing`) and `GolfDataModule` (`datamodule`). Import the submodules directly: the
package itself imports nothing, so the command-line tools start without loading torch or Lightning.
"""
