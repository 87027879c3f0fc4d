"""The demo's synthetic dataset (`chunkd demo`, daemon/cli/demo.py): FHIR-like Patient and
Observation resources as JSONB in table `demo_resource`, which the demo then exports with the
built-in `chunkd.bulk-export` job. Not runtime code, so its statements live here, with the
one command that runs them, rather than in storage/sql.py."""
from __future__ import annotations

import asyncpg

TABLE = "demo_resource"

DEMO_CREATE = """
DROP TABLE IF EXISTS demo_resource;
CREATE TABLE demo_resource (
    id            bigint PRIMARY KEY,
    resource_type text NOT NULL,
    updated_at    timestamptz NOT NULL,
    resource      jsonb NOT NULL
)"""
# One Patient per five resources; the rest are Observations referring to a patient.
DEMO_FILL = """
INSERT INTO demo_resource (id, resource_type, updated_at, resource)
SELECT g,
       CASE WHEN g % 5 = 0 THEN 'Patient' ELSE 'Observation' END,
       timestamptz '2026-01-01' + g * interval '1 second',
       CASE WHEN g % 5 = 0 THEN jsonb_build_object(
              'resourceType', 'Patient', 'id', 'p' || g,
              'name', jsonb_build_array(jsonb_build_object('family', 'Family' || (g % 997), 'given', jsonb_build_array('Given' || (g % 313)))),
              'gender', CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END,
              'birthDate', to_char(date '1940-01-01' + (g % 25000), 'YYYY-MM-DD'))
            ELSE jsonb_build_object(
              'resourceType', 'Observation', 'id', 'o' || g, 'status', 'final',
              'code', jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
                  'system', 'http://loinc.org', 'code', (ARRAY['8867-4', '8480-6', '29463-7', '2339-0'])[1 + g % 4]))),
              'subject', jsonb_build_object('reference', 'Patient/p' || (g - g % 5 + 5)),
              'valueQuantity', jsonb_build_object('value', 40 + (g % 120), 'unit', 'units'))
       END
FROM generate_series(1, $1::int) g"""


async def seed_demo_resources(pool: asyncpg.Pool, rows: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(DEMO_CREATE)
        await conn.execute(DEMO_FILL, rows)
