pub mod verify;
pub mod body;
