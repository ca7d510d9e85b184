//! Validation failures: every field that was wrong, named by its path, so
//! that a whole topology file can be fixed in one go.

use std::fmt;

use super::Error;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the field is, for example `consumers[1].max_batch` or `batch`.
    pub field: String,
    /// The offending value, as written.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.reason)
    }
}

/// All the fields that failed validation, one entry per field, so that a
/// whole file can be fixed in one go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors {
    errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn single(error: FieldError) -> Self {
        Self {
            errors: vec![error],
        }
    }

    /// Records one failed field.
    pub fn push(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// Records one failed field from its parts.
    pub fn add(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) {
        self.push(FieldError::new(field, value, reason));
    }

    /// Appends every error of `other`.
    pub fn extend(&mut self, other: ValidationErrors) {
        self.errors.extend(other.errors);
    }

    /// The failed fields, in the order they were found.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Whether a field of this exact name failed.
    pub fn has_field(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }

    /// Whether nothing failed.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` when nothing failed, the errors otherwise.
    pub fn into_result(self) -> Result<(), Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(self))
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [] => f.write_str("invalid input"),
            [one] => write!(f, "invalid {one}"),
            many => {
                write!(f, "{} invalid fields: ", many.len())?;
                for (i, e) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ValidationErrors {}
