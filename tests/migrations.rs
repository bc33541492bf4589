//! Migrations are only added, never edited once landed: every landed migration's checksum
//! is pinned here. A database migrated before the one edit that did happen (migration 3)
//! is repaired by `migrate`.

use otp_reconcile::db::{self, Db, DbError, MIGRATOR};
use sha2::{Digest, Sha384};
use sqlx::PgPool;
use std::path::{Path, PathBuf};

/// (version, SHA-384 of its text) of every landed migration. A new migration is added
/// here in the commit that adds it; a pinned one must never change.
const PINNED: &[(i64, &str)] = &[
    (
        20261126000001,
        "8ea4a34f65c5708d180cbdf1af585f972a5ae01a28c42029326974eac3b233033a5017c0f70ae1100f9d0f4c6447c083",
    ),
    (
        20261126000002,
        "05b7e9317d7fbbef99e4c7d2ebd1149ae7e66f9fb11de28438065ed98d636c669ab8665625af43a283c416c473ccc608",
    ),
    (
        20261126000003,
        "3d17cf70d58352f3a2f63678bec7f8a001b56a9b2ed4c0a8a39a502ba3696a55bace5273f353e840520c15db9a3f4424",
    ),
    (
        20261126000004,
        "6d35b7c3dc4a90951b0ab0250976b82a63588922649ac41e7bf2748fdc6d5925144dcce0a8a55545699d7347d17c60ad",
    ),
    (
        20261127000010,
        "f966109b4f7e0d608b037f271a27396cfb939664369131cfc5cf984588bab1d94ceb18226235e246d0243018a5b50ec3",
    ),
    (
        20261127000011,
        "a44da7086de5551eb547a267a5e6ea9e5c1841e6e74c4fc6de02e5788f44675ffaa133902ec1a026bc38fdc30eca22e9",
    ),
    (
        20261127000020,
        "789d1256c1b84e056d7858975b174898704cb96eabee3ce36a25de0d946a6813e92be30e5a790cb7e0ecc1d0ae8da0a7",
    ),
    (
        20261127000021,
        "9ccd64cdbd687d2d979b706df66d2da6a9dbf8a5ead2fde862333f6b6bc5409a88f4e2b6c1ff5afea74ca8939c32e3ca",
    ),
    (
        20261127000022,
        "9ac464577e7ca5af0a6de63c5cd77808813c30144fa9967b0ca944a235a20cc5ae0f8ededaa319673554872f06fd6bcb",
    ),
    (
        20261127000030,
        "a546c073814658df3180f3009c89a2e8a112c16ba062f49e1dcae91468607edef4f4ce39150239607dcd787b2c5cdb55",
    ),
    (
        20261128000040,
        "dd5a057d8a0a3a61fb3c9df27a758f8a4ce25a7fbcb68124c74622321c5fd4f839fac4d887b2ffc43f1b80af8ad4f7eb",
    ),
    (
        20261128000041,
        "c55ccbdaf57630c873739af05b4d732a433532f33d8e890fcd88d6a7011d6c2ea21de5e76ce31f1afc28e50cc92a0607",
    ),
    (
        20261128000050,
        "3c1512416c8e39f238c4c59e6cceec5d0320199c5b18458afe0f300265b06845497d1350df00d830d37ce39a72dc21ec",
    ),
    (
        20261128000051,
        "42a16f6c98b33628726eb39f631123f70ec9b3bf21e0f9cfc62af8df50357f5afea29919b46afd5895dad2aaf69ee506",
    ),
    (
        20261128000060,
        "82f4fb9c41f283f0ef5da66d28b7c4af2f2c109077bc06f425b5c9c634d228f95142f2d7369659790935a36daeca8396",
    ),
    (
        20261128000061,
        "3e9f1cd1e77c50bed5168ed0daec0d7110b6b89bb12493288c4b53dc3cc689c29e20feb5d7fa4be6221a9a9364e9f613",
    ),
    (
        20261128000070,
        "a1ab8bc7c39ec5a8d51eec8f0a71f8b11e65c43c7c0833aac27c6e854870fb9726f693f2a4be89554657791651c20d7e",
    ),
    (
        20261128000071,
        "ab856e293a2de0c2e5c1e58c987e80e888f6357c1461820dd8512828d9cd1f28fac8243db2f9e4adeaeb9482bbb9da3e",
    ),
    (
        20261128000072,
        "5d56ae87a59c548f3e4fe08d702b7c165af3a0dda634d7fe90e8dfb355cd9e17a655c4b61138f34cb2e31c552d8d2ffe",
    ),
    (
        20261128000080,
        "e4d29096bc949c57b080bc6c3846d6fdc627b8ef3ea5ecbca105e031e69d6541b299a8716a97a548fc63f7764db1cb27",
    ),
];

/// Migration 3 as it first landed, before its edit (commit bb24522).
const MIGRATION_3: i64 = 20261126000003;
const MIGRATION_3_BEFORE_EDIT: &str =
    "tests/fixtures/migrations/20261126000003_record_revisions.before-edit.sql";
const MIGRATION_3_BEFORE_EDIT_SHA384: &str = "3150142c7eb82834cbcce1d8c787e0c1156aed796c6bf8946830b74f2eadcb439aab9abbee17f946eb1a9f31eac43420";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_landed_migration_keeps_its_pinned_checksum() {
    for migration in MIGRATOR.iter() {
        let Some((_, pinned)) = PINNED.iter().find(|(v, _)| *v == migration.version) else {
            panic!(
                "migration {} ({}) is not pinned: add (version, {}) to PINNED in the commit \
                 that adds it",
                migration.version,
                migration.description,
                hex::encode(&*migration.checksum)
            );
        };
        assert_eq!(
            hex::encode(&*migration.checksum),
            *pinned,
            "migration {} was edited after it landed: add a new migration instead",
            migration.version
        );
    }
    for (version, _) in PINNED {
        assert!(
            MIGRATOR.iter().any(|m| m.version == *version),
            "landed migration {version} was removed"
        );
    }
}

#[test]
fn the_fixture_is_migration_3_as_it_first_landed() {
    let old = std::fs::read(root().join(MIGRATION_3_BEFORE_EDIT)).unwrap();
    assert_eq!(
        hex::encode(Sha384::digest(&old)),
        MIGRATION_3_BEFORE_EDIT_SHA384
    );
    let today = MIGRATOR.iter().find(|m| m.version == MIGRATION_3).unwrap();
    assert_ne!(today.sql.as_str(), std::str::from_utf8(&old).unwrap());
}

/// The migrations as a database migrated before the edit saw them: 1 to 4, with
/// migration 3's old text.
fn migrations_before_the_edit(dir: &Path) {
    for entry in std::fs::read_dir(root().join("migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version > 20261126000004 {
            continue;
        }
        let source = if version == MIGRATION_3 {
            root().join(MIGRATION_3_BEFORE_EDIT)
        } else {
            path.clone()
        };
        std::fs::copy(source, dir.join(name)).unwrap();
    }
}

async fn old_raw_nullable(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "SELECT is_nullable FROM information_schema.columns
         WHERE table_name = 'record_revisions' AND column_name = 'old_raw'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn migrate_repairs_a_database_migrated_before_the_edit_of_migration_3(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    migrations_before_the_edit(dir.path());
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    assert_eq!(old_raw_nullable(&pool).await, "NO");

    let db = Db::new(pool.clone());
    let refused = db::check_schema(&db).await.unwrap_err();
    assert!(
        matches!(refused, DbError::SchemaBeforeEdit(MIGRATION_3)),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("run `otp-reconcile migrate`"));

    db::migrate(&db).await.unwrap();
    db::check_schema(&db).await.unwrap();
    assert_eq!(old_raw_nullable(&pool).await, "YES");

    // A second migrate finds nothing to repair.
    db::migrate(&db).await.unwrap();
    db::check_schema(&db).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_migration_edited_in_another_way_is_still_refused(pool: PgPool) {
    let db = Db::new(pool.clone());
    db::migrate(&db).await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = $1")
        .bind(MIGRATION_3)
        .execute(&pool)
        .await
        .unwrap();
    let refused = db::check_schema(&db).await.unwrap_err();
    assert!(
        matches!(refused, DbError::SchemaEdited(MIGRATION_3)),
        "{refused:?}"
    );
}
