"""Reading what runs and studies leave on disk: run directories, comparison records, sweep tables.

This layer sits below both sides of each file: `compare` and `sweep` write these files (and read
run directories to tabulate them), the report only reads them. Neither imports the other, so
data flows one way: data -> models -> training -> results -> compare / sweep -> report -> commands.
Modules: `runs` (run directories, seed groups), `comparison` (comparison.json records),
`sweeps` (sweep.json), `ranking` (rank.json, Kendall's tau), `reference` (published numbers
compared against).
"""
