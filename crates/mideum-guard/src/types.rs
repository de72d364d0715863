//! Entity types and detected entities.

use std::fmt;

/// The kinds of personal data the guard recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityType {
    /// 주민등록번호 (resident registration number).
    KrRrn,
    /// 외국인등록번호 (foreigner registration number).
    KrFrn,
    /// 여권번호 (passport number).
    KrPassport,
    /// 운전면허번호 (driver licence number).
    KrDriverLicense,
    /// 사업자등록번호 (business registration number).
    KrBrn,
    /// 법인등록번호 (corporate registration number).
    KrCrn,
    /// Korean telephone number.
    KrPhone,
    /// Payment card number (Luhn valid).
    CreditCard,
    /// Bank account number (context dependent).
    KrBankAccount,
    /// E-mail address.
    Email,
    /// IPv4 or IPv6 address.
    IpAddress,
    /// 자동차 번호판.
    KrVehiclePlate,
    /// Road-name or lot-number postal address.
    KrAddress,
    /// Korean personal name found in context.
    KrPerson,
}

impl EntityType {
    /// Every type, in a fixed order (used by tests and reports).
    pub const ALL: [EntityType; 14] = [
        EntityType::KrRrn,
        EntityType::KrFrn,
        EntityType::KrPassport,
        EntityType::KrDriverLicense,
        EntityType::KrBrn,
        EntityType::KrCrn,
        EntityType::KrPhone,
        EntityType::CreditCard,
        EntityType::KrBankAccount,
        EntityType::Email,
        EntityType::IpAddress,
        EntityType::KrVehiclePlate,
        EntityType::KrAddress,
        EntityType::KrPerson,
    ];

    /// The stable upper-case name used in JSON output, redaction and placeholders.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::KrRrn => "KR_RRN",
            EntityType::KrFrn => "KR_FRN",
            EntityType::KrPassport => "KR_PASSPORT",
            EntityType::KrDriverLicense => "KR_DRIVER_LICENSE",
            EntityType::KrBrn => "KR_BRN",
            EntityType::KrCrn => "KR_CRN",
            EntityType::KrPhone => "KR_PHONE",
            EntityType::CreditCard => "CREDIT_CARD",
            EntityType::KrBankAccount => "KR_BANK_ACCOUNT",
            EntityType::Email => "EMAIL",
            EntityType::IpAddress => "IP_ADDRESS",
            EntityType::KrVehiclePlate => "KR_VEHICLE_PLATE",
            EntityType::KrAddress => "KR_ADDRESS",
            EntityType::KrPerson => "KR_PERSON",
        }
    }

    /// Parses the name produced by [`EntityType::as_str`].
    pub fn from_name(name: &str) -> Option<EntityType> {
        EntityType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One detected entity.
///
/// `start`/`end` count Unicode scalar values (the indices Python uses for
/// `str`), `byte_start`/`byte_end` are UTF-8 byte offsets for Rust callers.
/// Both always refer to the text that was analysed, never to an internally
/// normalised copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// What was found.
    pub kind: EntityType,
    /// Character offset of the first character.
    pub start: usize,
    /// Character offset one past the last character.
    pub end: usize,
    /// Byte offset of the first byte.
    pub byte_start: usize,
    /// Byte offset one past the last byte.
    pub byte_end: usize,
    /// Confidence in 0..=1.
    pub score: f32,
}
