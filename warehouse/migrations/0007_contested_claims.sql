-- Claims that cannot collide (see aggregator/src/lib.rs, "Exactly once").
--
-- Two members can claim a partition at once: both read the latest epoch e
-- before either wrote e + 1 (a stale member reloading after a failed insert
-- while Kafka gave the partition to another, or a lagging read). Every claim
-- now carries a random `claim_id`, and an epoch held by more than one claim
-- is *contested*: none of its rows count (fence 0: only rows at position 0,
-- which carry no events), while its smallest start still fences every
-- earlier epoch. Each claimer finds the contest at its next batch check and
-- claims again; the new claim resumes from the last checkpoint that counts.
-- A claim row written twice (same claim_id) is one claim. Claims written
-- before this migration have claim_id 0 and keep their meaning.

ALTER TABLE {db}.aggregator_claims ADD COLUMN claim_id UInt64 AFTER member;

DROP TABLE IF EXISTS {db}.aggregator_fences;

-- Per claimed epoch: the first offset it no longer owns (the smallest start
-- of a later epoch of the partition; 2^64-1 while it is the latest), or 0
-- when more than one claim holds it. Exactly one row per (topic, partition,
-- epoch): the inner query groups by it and ARRAY JOIN unrolls one array
-- element per group.
CREATE VIEW IF NOT EXISTS {db}.aggregator_fences AS
SELECT topic, partition, epoch,
       if(claimants > 1, toUInt64(0),
          arrayReduce('min', arrayPushBack(arrayFilter((s, e) -> e > epoch, starts, epochs), toUInt64(18446744073709551615)))) AS fence
FROM (
    SELECT topic, partition, groupArray(epoch) AS epochs, groupArray(start) AS starts, groupArray(claims) AS counts
    FROM (
        SELECT topic, partition, epoch, min(start_offset) AS start, uniqExact(claim_id) AS claims
        FROM {db}.aggregator_claims GROUP BY topic, partition, epoch
    )
    GROUP BY topic, partition
)
ARRAY JOIN epochs AS epoch, counts AS claimants;
